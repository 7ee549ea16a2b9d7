//! What `reprise replicate` copies: a vm's disk images, or a backup set's folder, each from
//! the primary host to its copy on the recovery host.

/// One replicated image of a VM: where it comes from and where its copy is.
pub(super) struct Image {
    pub(super) from: String,
    pub(super) src: String,
    pub(super) to: String,
    pub(super) dst: String,
}

/// A VM and its images, or a backup set and its folder, with its retention.
pub(super) struct VmImages {
    pub(super) id: String,
    pub(super) retention: u32,
    pub(super) images: Vec<Image>,
    /// A backup set (a folder replicated file by file), not a vm.
    pub(super) backup: bool,
}

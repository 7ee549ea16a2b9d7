//! The version of the helper protocol and of this program: the one number every request,
//! answer and stream between the orchestrator and helpers carries ([`super::protocol`],
//! [`super::wire`], [`super::tree`]). Constants only.

/// The version of the helper protocol this binary speaks. Raise it whenever a request, an
/// answer or a stream changes meaning. Version 1 is reprise before versions were exchanged
/// (its block stream starts `RPRSTR1`, its tree stream has no header). Version 3: a source
/// reads the disk as the guest sees it (NBD, dirty bitmaps), points say how, and the sides
/// compare a digest of the manifest before sending it. Version 4 carries vm definitions with
/// points (`Request::PutDefinition`, `Request::Definition`, `apply --definition`). Version 5:
/// the stream's request carries the recovery manifest's digest (a source that did not keep
/// that manifest refuses at once), and a manifest's digest is that of its header. Requests
/// added since without changing any other's meaning (`Request::MarkUnusable`) are answered
/// only by helpers that know them: every helper is this very binary (uploaded by its hash),
/// and another refuses an unknown request. Version 6: `send` of an image file refuses one
/// written while it was read, unless told `--live`. Version 7: `apply` of changes read since a
/// checkpoint names it (`--since`) and is refused unless the copy's newest point is that
/// checkpoint's. Version 8: `apply --pending` holds a point read live until its freeze is
/// confirmed (`Request::Confirm`), and a mark of a replication (torn, confirmed) stays until
/// a point of it is recorded. Version 9: `send --audit` reads every block and says, before
/// the end of its stream, which changed blocks its bitmap did not mark (`Record::Unmarked`),
/// and a backup set's file entries carry their status change time (`FileEntry::ctime_ns`).
/// Version 10: `apply-tree --source-ahead-us` brings a backup set's newest file time from the
/// source's clock to the orchestrator's; `release --returned` records what a failback copied
/// back of a backup set's folder, and `release --forget-returned` forgets it. Version 11:
/// `send --audit` says it made its check even when it found nothing missed
/// (`Record::Unmarked` of count 0), and the recovery side keeps a bitmap distrusted through
/// points whose read made no check; a backup set's stamp is its seal (`tree::tree_seal`).
/// Version 12: `apply --marker` records the bitmap that marks a disk file read while its vm
/// was stopped (`HowRead::marker`). Version 13: `send --mark` names the bitmaps a stopped
/// vm's qcow2 file must hold once `qemu-nbd` holds it (else it is not the file the read was
/// decided on, and nothing is sent). Version 14: a block stream's header says which file on
/// which machine the source read (`wire::Origin`), and a backup set's `Rec::Hello` which
/// folder: the recovery side refuses to write into it. Version 15: a copy written outside
/// reprise since its newest point is refused by `manifest`, `apply`, `tree-base` and
/// `apply-tree` unless they say `--overwrite-changed` (a failback's copy back) or it was let
/// go (`release --accept`). Version 16: `inspect` says the stamp a copy was let go at
/// (`CopyState::accepted`), and `roll-back` refuses a copy written outside reprise since its
/// newest point unless it was let go. Version 17: what is at a copy's path that reprise
/// neither made nor made a point of (a file; a folder holding files) is refused by
/// `manifest`, `apply`, `tree-base` and `apply-tree` unless they say `--overwrite-changed` or
/// `release --accept` took it as a copy as it now is (`CopyState::foreign`). Version 18: a
/// backup set's stream ends saying what a copy of its files leaves out (`Rec::End`'s
/// `left_out`), which its point keeps (`Point::left_out`). Version 19: `send --after-go` is
/// started before its disk's freeze holds, and opens nothing until its input's first byte
/// says to read (`protocol::GO`).
pub const PROTOCOL: u32 = 19;

/// The version of this program, as helpers report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

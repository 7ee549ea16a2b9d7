//! The shipped example (`inventory/`, `runbooks/`): it validates, and its plans, graph and impact
//! analyses are snapshotted so that every change to what reprise would do is reviewed.

use crate::common::{reprise, root};

#[test]
fn example_validates() {
    let run = reprise(&root(), &["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
}

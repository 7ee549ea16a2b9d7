//! The orchestrator's side of replication: deploys the helper, asks the recovery side for
//! its manifest and pipes the source helper into the recovery helper over SSH.

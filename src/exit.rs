//! Exit codes of the `reprise` binary: a documented, stable contract for scripts and cron.

/// Everything went as asked.
pub const OK: u8 = 0;
/// The run failed, or finished with failed or blocked steps; or it was not confirmed.
pub const FAILED: u8 = 1;
/// The command line is wrong (unknown option, missing argument; a run named by a path instead
/// of its id; a confirmation without a name): clap's own code.
pub const USAGE: u8 = 2;
/// The inventory or runbooks are invalid (syntax, unknown keys, references, cycles, templates,
/// site rules), or the command names something they do not define; or it asks what does not
/// apply: `confirm` of a step that does not wait for one, `resume` of a run that succeeded, of a
/// drill that is over, or with changed files.
pub const INVALID_INPUT: u8 = 3;
/// A file or folder could not be read or written; a run stopped because its journal could not
/// be written (resume it once the disk has room).
pub const IO: u8 = 4;
/// Another run holds the lock of this state folder, or the lock was taken on another machine,
/// or it is not a lock (it is left as it is).
pub const LOCKED: u8 = 5;
/// A failback found a service running on both sites, or a vm it copies back running on the
/// primary; a resumed failback or planned failover found a vm it copies running again where
/// it stopped it; or a
/// restore found a vm it starts running on its recovery host, or left there by a failover
/// (its newest data is on its recovery copies), or its recovery copies written outside any
/// failover: nothing was done (or, found as a
/// restore's step came to start it, that step failed and what depends on it did not run). Or a run's health
/// check found the vm it checks running on both sites (where the run brought it up and on the
/// side it left): that check failed.
pub const SPLIT_BRAIN: u8 = 6;
/// `reprise check`: a recovery would not work now (see its table); or a planned failover (a
/// failback) was refused because the check finds problems on the recovery (primary) side that
/// would stop it half-way (`--force` starts it anyway), or because it would start on the
/// primary a vm that ran on its recovery copies without copying them back (not forced).
pub const NOT_READY: u8 = 7;
/// `reprise status`: a replicated VM has no good point within its RPO target, or a service
/// its application replicates has a replication lag over its RPO target or unknown.
pub const RPO_BREACH: u8 = 8;
/// `reprise status --format nagios` exits with the monitoring-plugin codes instead: all
/// well.
pub const NAGIOS_OK: u8 = 0;
/// `status --format nagios`: worth attention (a point near its RPO, a check or a drill overdue).
pub const NAGIOS_WARNING: u8 = 1;
/// `status --format nagios`: a target missed, copies unreadable, or the last check not ready.
pub const NAGIOS_CRITICAL: u8 = 2;
/// `status --format nagios`: the state could not be judged (an invalid inventory, the output
/// not written).
pub const NAGIOS_UNKNOWN: u8 = 3;
/// The run was interrupted (Ctrl-C, SIGTERM, SIGHUP); `reprise resume` carries on.
pub const INTERRUPTED: u8 = 130;

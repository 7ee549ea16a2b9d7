//! Integration tests: the `reprise` binary and library at their boundaries.

mod bad_input;
mod cli;
mod common;
mod example;
mod faults;
mod fuzz;
mod hostile;
mod https;
mod hv;
mod lab;
mod lab_any;
mod lag;
mod libvirt;
mod monitoring;
mod ops;
mod props;
mod proxmox;
mod replica;
mod replica_faults;
mod report;
mod runs;
mod ssh;
mod ssh_config;
mod sshd;
mod vmdef;

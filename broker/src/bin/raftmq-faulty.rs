//! `raftmq` with storage fault injection compiled in (the
//! `fault-injection` feature): the tests reach EIO paths of the log, the
//! vote and the snapshot with it (`FAULT_INJECTION`, see
//! `raftmq::cluster::fault`). A binary of its own so that building it
//! never replaces the `raftmq` binary the other tests run.

#[path = "../main.rs"]
mod cli;

fn main() -> anyhow::Result<()> {
    cli::main()
}

//! gRPC services between raftmq brokers (Raft, Forward, Admin).
//!
//! The `.proto` files and their tonic/prost code generation arrive with the
//! cluster issue; this crate exists now so that the workspace layout of
//! DESIGN.md is in place from the start.

//! gRPC services between raftmq brokers (Raft, Admin, Forward), generated
//! from `proto/raftmq.proto` by tonic/prost.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod v1 {
    tonic::include_proto!("raftmq.v1");
}

//! Generates the gRPC code from `proto/raftmq.proto` with a vendored protoc,
//! so a fresh machine needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/raftmq.proto");
    tonic_prost_build::configure()
        // Payloads stay `Bytes`: shared with the engine, never copied.
        .bytes(".")
        .compile_protos(&["proto/raftmq.proto"], &["proto"])?;
    Ok(())
}

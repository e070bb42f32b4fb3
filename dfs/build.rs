//! Compiles `proto/gfdfs/v1/dfs.proto` with protox (pure Rust: no protoc needed) and generates
//! the prost messages and the tonic client and server.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/gfdfs/v1/dfs.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // File data as `bytes::Bytes`: a received chunk is a slice of the receive buffer, not a
    // copy of it.
    tonic_prost_build::configure()
        .bytes(".gfdfs.v1.StoreRequest.data")
        .bytes(".gfdfs.v1.FetchReply.data")
        .compile_fds(descriptors)?;
    Ok(())
}

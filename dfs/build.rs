//! Compiles `proto/gfdfs/v1/dfs.proto` with protox (pure Rust: no protoc needed) and generates
//! the prost messages and the tonic client and server.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/gfdfs/v1/dfs.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}

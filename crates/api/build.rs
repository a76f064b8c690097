//! Generates the gRPC code from `proto/` with protox, a protobuf compiler in Rust: building
//! tether never needs `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/tether/v1/config.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // Resource bodies are shared by every stream that sends them: `Bytes`, not a copy each.
    tonic_prost_build::configure().bytes(".tether.v1.Resource.json").compile_fds(descriptors)?;
    Ok(())
}

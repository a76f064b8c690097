//! Generates the etcd client from `proto/` with protox, a protobuf compiler in Rust: building
//! tether never needs `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/etcd/etcdserverpb/rpc.proto", "proto/etcd/mvccpb/kv.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}

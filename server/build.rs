//! Generates the gRPC services from `proto/` with protox, a protobuf compiler written in
//! Rust: building the server needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/streams.proto",
        "proto/persistent.proto",
        "proto/serverfeatures.proto",
    ];
    for file in files.iter().chain(&["proto/shared.proto"]) {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

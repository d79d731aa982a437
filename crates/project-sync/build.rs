//! Generates the gRPC code from `proto/understudy/v1/project.proto` when the
//! driver is built. `protoc` comes from the `protoc-bin-vendored` crate, so a
//! fresh machine needs no system package.

fn main() {
    #[cfg(feature = "driver")]
    {
        let proto = "../../proto/understudy/v1/project.proto";
        println!("cargo:rerun-if-changed={proto}");
        let protoc = match protoc_bin_vendored::protoc_bin_path() {
            Ok(path) => path,
            Err(e) => panic!("no vendored protoc for this platform: {e}"),
        };
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc);
        if let Err(e) = tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .bytes(".understudy.v1.FetchChunk.data")
            .bytes(".understudy.v1.SubmitChunk.data")
            .compile_with_config(config, &[proto], &["../../proto"])
        {
            panic!("cannot compile {proto}: {e}");
        }
    }
}

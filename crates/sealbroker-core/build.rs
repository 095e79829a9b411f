fn main() {
    println!("cargo:rerun-if-changed=../../proto/sealbroker/v1/blob.proto");
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config
        .compile_protos(&["../../proto/sealbroker/v1/blob.proto"], &["../../proto"])
        .expect("compile blob.proto");
}

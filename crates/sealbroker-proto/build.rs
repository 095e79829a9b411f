use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sealbroker_descriptor.bin"))
        // Messages that carry plaintext, or a config map that may hold a PIN,
        // get a redacting Debug (see lib.rs).
        .skip_debug([
            "sealbroker.v1.WrapRequest",
            "sealbroker.v1.UnwrapResponse",
            "sealbroker.v1.EncryptAsymmetricRequest",
            "sealbroker.v1.DecryptAsymmetricResponse",
            "pb.EncryptRequest",
            "pb.DecryptResponse",
            "wrapping.RPCOptions",
            "v2.EncryptRequest",
            "v2.DecryptResponse",
            "kms.OpenRequest",
            "kms.GetKeyRequest",
            "kms.EncryptRequest",
            "kms.DecryptResponse",
        ])
        .compile_with_config(
            config,
            &[
                "../../proto/sealbroker/v1/seal.proto",
                "../../proto/openbao/kms/wrapper.proto",
                "../../proto/openbao/kms/metadata.proto",
                "../../proto/openbao/kms/kms.proto",
                "../../proto/openbao/goplugin/controller.proto",
                "../../proto/k8s/kms/v2/api.proto",
            ],
            &["../../proto"],
        )
        .expect("compile protos");
}

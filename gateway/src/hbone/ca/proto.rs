//! The messages of `istio.v1.auth.IstioCertificateService`, written by hand with prost's derive
//! (no protoc). Field numbers as in Istio's `security/proto/providers/.../ca.proto` and
//! ztunnel's `proto/citadel.proto`.

/// The gRPC method path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded certificate signing request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity, in seconds.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Options; the gateway sends none (ztunnel sets `ImpersonatedIdentity` only when it
    /// signs for another workload).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the leaf first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The wire bytes are protobuf's for fields 1, 3 and 4: a mistyped tag would change them.
    #[test]
    fn field_numbers_are_istios() {
        let req = IstioCertificateRequest {
            csr: "C".into(),
            validity_duration: 5,
            metadata: Some(prost_types::Struct::default()),
        };
        // field 1 (len) "C", field 3 (varint) 5, field 4 (len) empty
        assert_eq!(req.encode_to_vec(), [0x0a, 1, b'C', 0x18, 5, 0x22, 0]);
        let resp = IstioCertificateResponse::decode(&[0x0a, 1, b'L', 0x0a, 1, b'R'][..]).unwrap();
        assert_eq!(resp.cert_chain, ["L", "R"]);
    }
}

//! Container Storage Interface v1.12.0: protobuf messages and tonic stubs, generated at build
//! time from `proto/csi.proto` (see `README.md` for its origin).
//!
//! Only generated code lives here, walled off from the driver's lints. The node requests that
//! carry `csi_secret` fields (`secrets`, and the service-account tokens kubelet puts in
//! `volume_context`) get a hand-written `Debug` that prints no value of either map.

pub mod v1 {
    //! Package `csi.v1`.
    #![allow(
        clippy::all,
        clippy::pedantic,
        clippy::nursery,
        clippy::unwrap_used,
        missing_docs,
        rustdoc::all,
        unreachable_pub
    )]
    tonic::include_proto!("csi.v1");
}

mod redacted {
    use std::collections::HashMap;
    use std::fmt;

    use crate::v1::volume_capability::AccessType;
    use crate::v1::{
        NodeExpandVolumeRequest, NodePublishVolumeRequest, NodeStageVolumeRequest, VolumeCapability,
    };

    /// Prints a map's keys only: `{"a", "b"}`.
    struct Keys<'a>(&'a HashMap<String, String>);

    impl fmt::Debug for Keys<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut keys: Vec<&String> = self.0.keys().collect();
            keys.sort();
            f.debug_set().entries(keys).finish()
        }
    }

    /// The access type only: `mount_flags` "MAY contain sensitive information" (spec).
    fn access_type(c: Option<&VolumeCapability>) -> &'static str {
        match c.and_then(|c| c.access_type.as_ref()) {
            Some(AccessType::Mount(_)) => "mount",
            Some(AccessType::Block(_)) => "block",
            None => "none",
        }
    }

    impl fmt::Debug for NodePublishVolumeRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("NodePublishVolumeRequest")
                .field("volume_id", &self.volume_id)
                .field("target_path", &self.target_path)
                .field("staging_target_path", &self.staging_target_path)
                .field("readonly", &self.readonly)
                .field("access_type", &access_type(self.volume_capability.as_ref()))
                .field("publish_context_keys", &Keys(&self.publish_context))
                .field("volume_context_keys", &Keys(&self.volume_context))
                .field("secrets_keys", &Keys(&self.secrets))
                .finish()
        }
    }

    impl fmt::Debug for NodeStageVolumeRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("NodeStageVolumeRequest")
                .field("volume_id", &self.volume_id)
                .field("staging_target_path", &self.staging_target_path)
                .field("access_type", &access_type(self.volume_capability.as_ref()))
                .field("volume_context_keys", &Keys(&self.volume_context))
                .field("secrets_keys", &Keys(&self.secrets))
                .finish_non_exhaustive()
        }
    }

    impl fmt::Debug for NodeExpandVolumeRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("NodeExpandVolumeRequest")
                .field("volume_id", &self.volume_id)
                .field("volume_path", &self.volume_path)
                .field("secrets_keys", &Keys(&self.secrets))
                .finish_non_exhaustive()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::NodePublishVolumeRequest;

    #[test]
    fn publish_request_debug_prints_no_value() {
        let req = NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: "/t".into(),
            readonly: true,
            secrets: [(
                "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
                "SECRET-A".to_owned(),
            )]
            .into(),
            volume_context: [(
                "csi.storage.k8s.io/serviceAccount.tokens".to_owned(),
                "SECRET-B".to_owned(),
            )]
            .into(),
            ..Default::default()
        };
        let s = format!("{req:?}");
        assert!(!s.contains("SECRET"), "{s}");
        assert!(
            s.contains("csi-1") && s.contains("serviceAccount.tokens"),
            "{s}"
        );
    }
}

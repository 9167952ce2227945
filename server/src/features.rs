//! ServerFeatures: the methods clients may use (kurrentdb-wire.md §7).
//!
//! Names are lowercase, services fully qualified, as the clients compare them. BatchAppend
//! is not implemented and so not listed: clients then append with Append.

use tonic::{Request, Response, Status};

use crate::proto::server_features::server_features_server::ServerFeatures;
use crate::proto::server_features::{SupportedMethod, SupportedMethods};
use crate::proto::shared::Empty;

const PERSISTENT: &str = "event_store.client.persistent_subscriptions.persistentsubscriptions";

/// The implemented methods, with their features.
const METHODS: &[(&str, &str, &[&str])] = &[
    (
        "event_store.client.streams.streams",
        "read",
        &["position", "events"],
    ),
    ("event_store.client.streams.streams", "append", &[]),
    (PERSISTENT, "create", &["stream", "all"]),
    (PERSISTENT, "update", &["stream", "all"]),
    (PERSISTENT, "delete", &["stream", "all"]),
    (PERSISTENT, "read", &["stream", "all"]),
    (PERSISTENT, "getinfo", &["stream", "all"]),
    (PERSISTENT, "replayparked", &["stream", "all"]),
    (PERSISTENT, "list", &["stream", "all"]),
    (PERSISTENT, "restartsubsystem", &[]),
    (
        "event_store.client.server_features.serverfeatures",
        "getsupportedmethods",
        &[],
    ),
];

pub struct Service;

#[tonic::async_trait]
impl ServerFeatures for Service {
    async fn get_supported_methods(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let methods = METHODS
            .iter()
            .map(|(service, method, features)| SupportedMethod {
                method_name: (*method).to_owned(),
                service_name: (*service).to_owned(),
                features: features.iter().map(|f| (*f).to_owned()).collect(),
            })
            .collect();
        Ok(Response::new(SupportedMethods {
            methods,
            event_store_server_version: crate::SERVER_VERSION.to_owned(),
        }))
    }
}

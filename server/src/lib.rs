//! `eventstore serve`: EventStoreDB's (KurrentDB's) gRPC protocol in front of pg_eventstore.
//!
//! Applications written against EventStoreDB's own clients (`@eventstore/db-client`, the
//! `kurrentdb` crate, ...) point their connection string at this server and run unchanged:
//! appends, stream and `$all` reads, catch-up subscriptions and persistent subscriptions go
//! to the store's SQL API in the PostgreSQL database the server connects to.
//!
//! How the protocol's notions map onto the store:
//! - a stream revision is the event's version; an `$all` position is the store's position,
//!   as both the commit and the prepare position;
//! - JSON data is stored as the event's `jsonb` data; other data as a JSON string holding its
//!   base64, with metadata `"$contentType": "application/octet-stream"` ([`mod@codec`]);
//! - custom metadata that is a JSON object becomes the event's metadata, and its exact bytes
//!   are kept too, so that it reads back byte for byte.
//!
//! The same port answers HTTP/1.1 and h2 for browsers and monitors ([`mod@web`]): the stream
//! browser under `/ui`, `/metrics` and `/health`.

#![deny(missing_docs)]
// tonic's service methods return `Result<_, tonic::Status>`; helpers return the same type
// rather than box what tonic then unboxes.
#![allow(clippy::result_large_err)]

mod callers;
pub mod codec;
mod connection;
mod features;
mod persistent;
mod status;
mod streams;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use pg_eventstore_client::projection::Projection;
use pg_eventstore_client::EventStore;

/// The code generated from `proto/` (see `build.rs`), in modules nested as the protobuf
/// packages are, which the generated code's paths rely on.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// `event_store`.
    pub mod event_store {
        /// `event_store.client`: the messages the services share.
        pub mod client {
            tonic::include_proto!("event_store.client");
            /// `event_store.client.streams`.
            pub mod streams {
                tonic::include_proto!("event_store.client.streams");
            }
            /// `event_store.client.persistent_subscriptions`.
            pub mod persistent_subscriptions {
                tonic::include_proto!("event_store.client.persistent_subscriptions");
            }
            /// `event_store.client.server_features`.
            pub mod server_features {
                tonic::include_proto!("event_store.client.server_features");
            }
        }
    }
    pub use event_store::client as shared;
    pub use event_store::client::{
        persistent_subscriptions as persistent, server_features, streams,
    };
}

#[allow(missing_docs)]
mod embedded {
    refinery::embed_migrations!("../migrations/kurrentdb");
}

/// The history table of the server's migration set.
pub const HISTORY_TABLE: &str = "kurrentdb_schema_history";

/// The server's own migration set (`migrations/kurrentdb`: the persistent subscriptions'
/// table), applied after the store's (`eventstore migrate` applies both).
pub fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

/// The version the server reports to clients (`X.Y.Z`, which the clients require).
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The address `eventstore serve` listens on unless told otherwise (EventStoreDB's port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2113";

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Allow a listening address other than loopback without TLS, where nothing
    /// authenticates callers (over TLS every call is authenticated, on any address).
    pub insecure: bool,
    /// Serve over TLS with this certificate chain and key (PEM files); cleartext HTTP/2
    /// without.
    pub tls: Option<TlsFiles>,
    /// Serve the stream browser's pages (`/ui`) beside gRPC; `/metrics` and `/health` are
    /// served either way.
    pub ui: bool,
}

/// The PEM files of a TLS identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, the server's certificate first.
    pub cert: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Serving without authentication on an address other than loopback was not allowed.
    #[error(
        "{0} is not a loopback address: without TLS and authentication the server only \
         listens on loopback; pass --insecure to serve on {0} anyway"
    )]
    NotLoopback(SocketAddr),
    /// The listening socket could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: SocketAddr,
        /// What the system reported.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The transport failed.
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound listening socket: the address is known (port 0 picks a free one) before serving.
pub struct Listener {
    listener: tokio::net::TcpListener,
    /// The transport, with its TLS set up already when there is TLS.
    server: tonic::transport::Server,
    tls: bool,
    ui: bool,
    loopback: bool,
}

impl Listener {
    /// Binds `options.listen`, refusing a non-loopback address without TLS unless
    /// `options.insecure`.
    pub async fn bind(options: &ServeOptions) -> Result<Self, ServeError> {
        // Over TLS every call is authenticated; over cleartext none is.
        if !options.listen.ip().is_loopback() && !options.insecure && options.tls.is_none() {
            return Err(ServeError::NotLoopback(options.listen));
        }
        let mut server = tonic::transport::Server::builder();
        if let Some(files) = &options.tls {
            server = with_tls(server, files)?;
        }
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ServeError::Listen {
                address: options.listen,
                source,
            })?;
        Ok(Listener {
            listener,
            server,
            tls: options.tls.is_some(),
            ui: options.ui,
            loopback: options.listen.ip().is_loopback(),
        })
    }

    /// Whether the server speaks TLS (`esdb://…?tls=true`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The stream browser's address (`http://…/ui` or `https://…/ui`), when it is served.
    pub fn ui_url(&self) -> std::io::Result<Option<String>> {
        let address = self.local_addr()?;
        Ok(self
            .ui
            .then(|| format!("{}://{address}/ui", if self.tls { "https" } else { "http" })))
    }

    /// Serves the store's gRPC services, and the HTTP routes beside them, until `shutdown`
    /// completes, then stops accepting calls and waits for the calls in progress
    /// (subscriptions and live pages end at once). `projections` are those the projections
    /// page may rebuild.
    pub async fn serve(
        self,
        store: EventStore,
        projections: Vec<Arc<dyn Projection>>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let (stop_streams, stopped) = tokio::sync::watch::channel(false);
        let metrics = Arc::new(web::metrics::Metrics::default());
        let callers = Arc::new(callers::Callers::new(store.clone(), self.tls));
        let streams = streams::Service::new(callers.clone(), stopped.clone(), metrics.clone());
        let persistent = persistent::Service::new(callers, stopped.clone(), metrics.clone());
        let pages = web::Web::new(
            store.clone(),
            projections,
            metrics.clone(),
            self.loopback,
            self.tls,
            stopped,
        );
        // The rates only the dashboard draws.
        let sampler = self
            .ui
            .then(|| tokio::spawn(metrics.clone().sample(store.clone())));
        let incoming = futures_util::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(self.listener),
            |accepted| accepted.and_then(connection::Connection::accept),
        );
        let shutdown = async move {
            shutdown.await;
            // Long-lived calls (subscriptions) end now, so that the graceful shutdown below
            // need not wait for clients that never hang up.
            let _ = stop_streams.send(true);
        };
        let mut grpc = tonic::service::Routes::builder();
        grpc.add_service(
            proto::streams::streams_server::StreamsServer::new(streams)
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            proto::persistent::persistent_subscriptions_server::PersistentSubscriptionsServer::new(
                persistent,
            )
            .max_decoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            proto::server_features::server_features_server::ServerFeaturesServer::new(
                features::Service,
            ),
        );
        let router = grpc
            .routes()
            .into_axum_router()
            .merge(web::router(pages, self.ui))
            .fallback(web::fallback)
            .route_layer(axum::middleware::from_fn_with_state(
                metrics,
                web::metrics::track,
            ));
        let served = self
            .server
            // Clients ping every 10 s while calls are active: allow it.
            .http2_keepalive_interval(None)
            // Browsers and monitors speak HTTP/1.1 beside gRPC's HTTP/2.
            .accept_http1(true)
            .add_routes(tonic::service::Routes::from(router))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Some(sampler) = sampler {
            sampler.abort();
        }
        served?;
        Ok(())
    }
}

/// `server` serving TLS with the identity in `files`: the files are read and the key made
/// usable now, so that a bad file stops the server before it listens.
fn with_tls(
    server: tonic::transport::Server,
    files: &TlsFiles,
) -> Result<tonic::transport::Server, ServeError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|error| ServeError::Tls(format!("{}: {error}", path.display())))
    };
    let identity = tonic::transport::Identity::from_pem(read(&files.cert)?, read(&files.key)?);
    let config = tonic::transport::ServerTlsConfig::new().identity(identity);
    server.tls_config(config).map_err(|error| {
        // tonic's own message says only "transport error": the cause is in its sources.
        let mut cause = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            cause = inner.to_string();
            source = inner.source();
        }
        ServeError::Tls(format!(
            "{} and {} are not a usable certificate and key: {cause}",
            files.cert.display(),
            files.key.display()
        ))
    })
}

/// The largest request message accepted: EventStoreDB's default largest append is 16 MiB.
const MAX_MESSAGE_SIZE: usize = 17 * 1024 * 1024;

//! `serve --notify-webhook URL`: a notice POSTed as JSON
//! (`{"replica", "state", "lastPush", "expectedEverySeconds",
//! "expectedEvery", "at"}`) with hyper-util's client, over rustls for
//! `https://` (the webpki root certificates). Any 2xx answer is a
//! delivery; anything else, or no answer within the timeout, is a failure
//! to retry.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("{0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("it answered {0}")]
    Status(http::StatusCode),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// A client for one webhook URL.
pub struct Webhook {
    url: http::Uri,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Webhook {
    pub fn new(url: http::Uri) -> Webhook {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Webhook {
            url,
            client: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// POSTs `json`, waiting at most `timeout` for the answer's head.
    pub async fn post(&self, json: &str, timeout: Duration) -> Result<(), WebhookError> {
        let req = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("sqlrsync-server/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(json.to_owned())))?;
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| WebhookError::TimedOut(timeout))??;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(resp.status()))
        }
    }
}

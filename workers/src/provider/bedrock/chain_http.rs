//! The HTTP client the AWS credential chain talks through: reqwest, which batchyard already
//! has, instead of the AWS SDK's own hyper stack (which would add a second TLS and connection
//! stack to build). The chain's sources are small JSON or XML answers from instance metadata,
//! the container agent and STS.

use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;

/// The largest credential answer read; real ones are a few KiB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Used when the chain's source sets no timeout of its own (IMDS sets 1 s).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An [`HttpClient`] for `aws-config` over one reqwest client.
#[derive(Debug, Clone)]
pub struct ReqwestHttp {
    client: reqwest::Client,
}

impl ReqwestHttp {
    pub fn new() -> Result<Self, reqwest::Error> {
        // No proxy: instance metadata and the container agent are link-local and must not
        // be sent through an HTTP(S)_PROXY meant for the internet.
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { client })
    }
}

impl HttpClient for ReqwestHttp {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let timeout = match (settings.connect_timeout(), settings.read_timeout()) {
            (None, None) => DEFAULT_TIMEOUT,
            (connect, read) => connect.unwrap_or_default() + read.unwrap_or(DEFAULT_TIMEOUT),
        };
        SharedHttpConnector::new(Connector {
            client: self.client.clone(),
            timeout,
        })
    }
}

#[derive(Debug)]
struct Connector {
    client: reqwest::Client,
    timeout: Duration,
}

fn io(err: reqwest::Error) -> ConnectorError {
    if err.is_timeout() {
        ConnectorError::timeout(err.into())
    } else {
        ConnectorError::io(err.into())
    }
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let timeout = self.timeout;
        HttpConnectorFuture::new(async move {
            let method = reqwest::Method::from_bytes(request.method().as_bytes())
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            let mut builder = client.request(method, request.uri()).timeout(timeout);
            for (name, value) in request.headers() {
                builder = builder.header(name, value);
            }
            if let Some(bytes) = request.body().bytes() {
                builder = builder.body(bytes.to_vec());
            }
            let mut response = builder.send().await.map_err(io)?;
            let status = StatusCode::try_from(response.status().as_u16())
                .map_err(|e| ConnectorError::other(e.into(), None))?;
            let headers = std::mem::take(response.headers_mut());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(io)? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(ConnectorError::other(
                        "a credential source answered with more than 1 MiB".into(),
                        None,
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            let mut out = HttpResponse::new(status, SdkBody::from(body));
            for (name, value) in &headers {
                if let Ok(value) = value.to_str() {
                    out.headers_mut()
                        .append(name.as_str().to_owned(), value.to_owned());
                }
            }
            Ok(out)
        })
    }
}

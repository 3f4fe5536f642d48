//! Helpers of the HTTP tests: an emulator started in-process on a free port, called over TLS.

#![allow(dead_code)]

use std::sync::Arc;

use iothub_emulator::auth::{build_token, encode_resource};
use iothub_emulator::clock::Clock;
use iothub_emulator::{Emulator, EmulatorOptions, start};
use reqwest::Method;
use serde_json::{Value, json};

pub struct TestHub {
    pub emulator: Emulator,
    pub client: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    _dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts IoT Hub's error contract: status, `iothub-errorcode` header, body code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(
            self.header("iothub-errorcode"),
            Some(code),
            "body: {}",
            self.body
        );
        let message = self.body["Message"].as_str().expect("Message");
        if status == 401 {
            let inner: Value = serde_json::from_str(message).unwrap();
            assert_eq!(inner["errorCode"].as_u64().unwrap() / 1000, 401);
        } else {
            assert!(
                message.starts_with(&format!("ErrorCode:{code};")),
                "{message}"
            );
        }
    }
}

pub fn client_for(emulator: &Emulator, identity: Option<reqwest::Identity>) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(emulator.ca_pem().as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder().add_root_certificate(ca);
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder.build().unwrap()
}

impl TestHub {
    pub async fn start(configure: impl FnOnce(&mut EmulatorOptions)) -> Self {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let mut options = EmulatorOptions::new(dir.path());
        configure(&mut options);
        let clock = options.clock.clone();
        let emulator = start(options).await.unwrap();
        let client = client_for(&emulator, None);
        Self {
            emulator,
            client,
            clock,
            _dir: dir,
        }
    }

    pub async fn lenient() -> Self {
        Self::start(|_| {}).await
    }

    pub async fn strict() -> Self {
        Self::start(|o| o.strict = true).await
    }

    pub fn now_secs(&self) -> i64 {
        self.clock.now_millis() / 1000
    }

    /// A token of `policy` as the Python SDK builds it.
    pub fn token(&self, policy: &str) -> String {
        let key = &self.emulator.policy(policy).unwrap().primary_key;
        build_token(
            &encode_resource(self.emulator.host_name()),
            key,
            Some(policy),
            self.now_secs() + 3600,
        )
    }

    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        auth: Option<String>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = if path.contains("api-version") || path.starts_with("/_emulator") {
            format!("{}{path}", self.emulator.base_url())
        } else {
            format!(
                "{}{path}{separator}api-version=2021-04-12",
                self.emulator.base_url()
            )
        };
        let mut request = self.client.request(method, url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_with(method, path, body, Some(self.token("iothubowner")), &[])
            .await
    }

    pub async fn create_device(&self, id: &str, extra: Value) -> Answer {
        let mut body = json!({"deviceId": id, "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
            "capabilities": {"iotEdge": false}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.call(Method::PUT, &format!("/devices/{id}"), Some(body))
            .await
    }

    pub async fn create_edge(&self, id: &str, parent_scope: Option<&str>) -> Answer {
        let parents: Vec<&str> = parent_scope.into_iter().collect();
        let answer = self
            .create_device(
                id,
                json!({"capabilities": {"iotEdge": true}, "parentScopes": parents}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer
    }
}

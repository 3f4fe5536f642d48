//! A raw IoT Hub service client for tests: out-of-band edits ("someone in the portal") and
//! checks, with its own SAS signing so it shares no code with the operator's client.

use anyhow::{Context as _, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::Sha256;

const API: &str = "api-version=2021-04-12";

#[derive(Clone)]
pub struct HubAdmin {
    http: reqwest::Client,
    host: String,
    policy: String,
    key: Vec<u8>,
}

impl HubAdmin {
    pub fn new(connection_string: &str, ca_pem: &str) -> anyhow::Result<Self> {
        let part = |name: &str| {
            connection_string
                .split(';')
                .find_map(|p| p.strip_prefix(&format!("{name}=")))
                .map(str::to_string)
                .with_context(|| format!("{name} missing from the connection string"))
        };
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
            .build()?;
        Ok(Self {
            http,
            host: part("HostName")?,
            policy: part("SharedAccessKeyName")?,
            key: STANDARD.decode(part("SharedAccessKey")?)?,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn token(&self) -> String {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let resource = utf8_percent_encode(&self.host, NON_ALPHANUMERIC).to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{resource}\n{expiry}").as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        format!(
            "SharedAccessSignature sr={resource}&sig={}&se={expiry}&skn={}",
            utf8_percent_encode(&signature, NON_ALPHANUMERIC),
            self.policy
        )
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("https://{}/{path}{sep}{API}", self.host)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<(u16, Value)> {
        let response = request
            .header("Authorization", self.token())
            .send()
            .await
            .with_context(|| what.to_string())?;
        let status = response.status().as_u16();
        let body = response.text().await?;
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        };
        Ok((status, value))
    }

    fn segment(id: &str) -> String {
        utf8_percent_encode(id, NON_ALPHANUMERIC).to_string()
    }

    /// The device identity, or None when it does not exist.
    pub async fn device(&self, id: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self
            .send(
                self.http
                    .get(self.url(&format!("devices/{}", Self::segment(id)))),
                "GET device",
            )
            .await?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => bail!("GET device {id}: {status} {body}"),
        }
    }

    /// The device twin (a GET: queries lag writes, GETs do not); fails when there is none.
    pub async fn twin(&self, id: &str) -> anyhow::Result<Value> {
        self.twin_if_any(id)
            .await?
            .with_context(|| format!("GET twin {id}: 404, no such device"))
    }

    /// The device twin, or None when the device does not exist. A 429 is waited out, as a
    /// client would.
    async fn twin_if_any(&self, id: &str) -> anyhow::Result<Option<Value>> {
        for _ in 0..10 {
            let (status, body) = self
                .send(
                    self.http
                        .get(self.url(&format!("twins/{}", Self::segment(id)))),
                    "GET twin",
                )
                .await?;
            match status {
                200 => return Ok(Some(body)),
                404 => return Ok(None),
                429 => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                _ => bail!("GET twin {id}: {status} {body}"),
            }
        }
        bail!("GET twin {id}: still throttled after 10 tries")
    }

    /// Read-modify-write of a device identity, as the portal does.
    pub async fn edit_device(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Value),
    ) -> anyhow::Result<Value> {
        let mut device = self
            .device(id)
            .await?
            .with_context(|| format!("device {id} does not exist"))?;
        edit(&mut device);
        let (status, body) = self
            .send(
                self.http
                    .put(self.url(&format!("devices/{}", Self::segment(id))))
                    .header("If-Match", "*")
                    .json(&device),
                "PUT device",
            )
            .await?;
        if status != 200 {
            bail!("PUT device {id}: {status} {body}");
        }
        Ok(body)
    }

    /// Creates a device (no owner tags).
    pub async fn create_device(&self, id: &str, edge: bool, extra: Value) -> anyhow::Result<Value> {
        let mut device = json!({
            "deviceId": id, "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
            "capabilities": {"iotEdge": edge},
        });
        if let (Some(d), Some(e)) = (device.as_object_mut(), extra.as_object()) {
            d.extend(e.clone());
        }
        let (status, body) = self
            .send(
                self.http
                    .put(self.url(&format!("devices/{}", Self::segment(id))))
                    .json(&device),
                "create device",
            )
            .await?;
        if status != 200 {
            bail!("create device {id}: {status} {body}");
        }
        Ok(body)
    }

    pub async fn delete_device(&self, id: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .send(
                self.http
                    .delete(self.url(&format!("devices/{}", Self::segment(id))))
                    .header("If-Match", "*"),
                "DELETE device",
            )
            .await?;
        if status != 204 && status != 200 {
            bail!("DELETE device {id}: {status} {body}");
        }
        Ok(())
    }

    pub async fn patch_tags(&self, id: &str, tags: Value) -> anyhow::Result<()> {
        let (status, body) = self
            .send(
                self.http
                    .patch(self.url(&format!("twins/{}", Self::segment(id))))
                    .json(&json!({"tags": tags})),
                "PATCH twin",
            )
            .await?;
        if status != 200 {
            bail!("PATCH twin {id}: {status} {body}");
        }
        Ok(())
    }

    /// Every row of a query, following continuation tokens.
    pub async fn query(&self, sql: &str) -> anyhow::Result<Vec<Value>> {
        let mut rows = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut request = self
                .http
                .post(self.url("devices/query"))
                .json(&json!({"query": sql}))
                .header("x-ms-max-item-count", "100");
            if let Some(c) = &continuation {
                request = request.header("x-ms-continuation", c);
            }
            let response = request.header("Authorization", self.token()).send().await?;
            let status = response.status().as_u16();
            continuation = response
                .headers()
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body: Value = response.json().await?;
            if status != 200 {
                bail!("query {sql:?}: {status} {body}");
            }
            rows.extend(body.as_array().cloned().unwrap_or_default());
            if continuation.is_none() {
                return Ok(rows);
            }
        }
    }

    /// The twins of `ids` that exist, by id, each read with a GET (see [`HubAdmin::twin`]).
    pub async fn twins(
        &self,
        ids: &[&str],
    ) -> anyhow::Result<std::collections::BTreeMap<String, Value>> {
        let mut twins = std::collections::BTreeMap::new();
        for id in ids {
            if let Some(twin) = self.twin_if_any(id).await? {
                twins.insert(id.to_string(), twin);
            }
        }
        Ok(twins)
    }

    /// GET of any service path (without the api-version), failing on a non-200 answer.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.send(self.http.get(self.url(path)), "GET").await?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(body)
    }

    pub async fn put_json(
        &self,
        path: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.put(self.url(path)).json(body);
        if let Some(etag) = if_match {
            request = request.header("If-Match", format!("\"{}\"", etag.trim_matches('"')));
        }
        let (status, answer) = self.send(request, "PUT").await?;
        if status != 200 && status != 201 {
            bail!("PUT {path}: {status} {answer}");
        }
        Ok(answer)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let (status, answer) = self
            .send(self.http.post(self.url(path)).json(body), "POST")
            .await?;
        if !(200..300).contains(&status) {
            bail!("POST {path}: {status} {answer}");
        }
        Ok(answer)
    }

    pub async fn delete_json(&self, path: &str) -> anyhow::Result<()> {
        let (status, answer) = self
            .send(
                self.http.delete(self.url(path)).header("If-Match", "\"*\""),
                "DELETE",
            )
            .await?;
        if status != 204 && status != 200 {
            bail!("DELETE {path}: {status} {answer}");
        }
        Ok(())
    }

    /// `GET /_emulator/ROUTE` (stats, faults, writes) as JSON.
    pub async fn get_emulator(&self, route: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("https://{}/_emulator/{route}", self.host))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    pub async fn stats(&self) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("https://{}/_emulator/stats", self.host))
            .send()
            .await?;
        Ok(response.json().await?)
    }

    /// The keys of a device (to scan logs for them).
    pub async fn device_keys(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let device = self.device(id).await?.unwrap_or_default();
        Ok(["primaryKey", "secondaryKey"]
            .iter()
            .filter_map(|k| {
                device
                    .pointer(&format!("/authentication/symmetricKey/{k}"))
                    .and_then(Value::as_str)
            })
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect())
    }
}

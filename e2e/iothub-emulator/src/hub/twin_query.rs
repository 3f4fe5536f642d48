//! `POST /devices/query`: the documents the query engine reads, and paging.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::{Hub, Reply};
use crate::error::HubError;
use crate::query::{Collection, parse_query_with};
use crate::registry::Fields;

/// Page size when the client sends no `x-ms-max-item-count`.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page the emulator returns.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Opaque continuation token: the offset of the next row.
fn encode_continuation(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("emulator-offset:{offset}"))
}

fn decode_continuation(token: &str) -> Option<usize> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("emulator-offset:")?
        .parse()
        .ok()
}

impl Hub {
    /// Twin documents of a collection, as `GET /twins/...` renders them, in id order.
    pub fn twin_documents(&self, collection: Collection) -> Vec<Value> {
        match collection {
            Collection::Devices => self.devices.values().map(|d| d.render_twin()).collect(),
            Collection::DevicesModules => self
                .devices
                .values()
                .flat_map(|d| d.modules.values().map(move |m| d.render_module_twin(m)))
                .collect(),
        }
    }

    /// Runs a query and returns one page. `max_items` and `continuation` are the request
    /// headers `x-ms-max-item-count` and `x-ms-continuation`. With `--query-lag-ms` the query
    /// reads the lagging view, otherwise the live twins.
    pub fn query(
        &mut self,
        body: &Value,
        max_items: Option<&str>,
        continuation: Option<&str>,
        now_ms: i64,
    ) -> Result<Reply, HubError> {
        let fields = Fields::of(body, "QuerySpecification")?;
        let text = fields.string("query")?.ok_or_else(|| {
            HubError::bad_request("the body must be {\"query\": \"SELECT ... FROM devices ...\"}")
        })?;
        let max_length = self.realism().max_query_length;
        let length = text.chars().count();
        if max_length > 0 && length > max_length {
            return Err(HubError::bad_request(format!(
                "the query is {length} characters long; IoT Hub accepts query expressions of at most {max_length} characters, so split it (for example fewer ids per IN list)"
            )));
        }
        let query = parse_query_with(&text, self.query_literals()).map_err(|e| {
            HubError::bad_request(format!(
                "query '{text}' has a syntax error at character {}: {}",
                e.position, e.message
            ))
        })?;
        let page_size = match max_items.map(str::trim).filter(|s| !s.is_empty()) {
            None => DEFAULT_PAGE_SIZE,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if n >= 1 => usize::try_from(n)
                    .unwrap_or(MAX_PAGE_SIZE)
                    .min(MAX_PAGE_SIZE),
                _ => {
                    return Err(HubError::bad_request(format!(
                        "x-ms-max-item-count '{raw}' must be a positive integer"
                    )));
                }
            },
        };
        let offset = match continuation.map(str::trim).filter(|s| !s.is_empty()) {
            None => 0,
            Some(token) => decode_continuation(token).ok_or_else(|| {
                HubError::bad_request(
                    "x-ms-continuation is not a token this hub issued; send back the previous page's header unchanged",
                )
            })?,
        };
        let documents = match self.query_view.as_mut() {
            Some(view) => view.documents(query.collection(), now_ms),
            None => self.twin_documents(query.collection()),
        };
        let rows = query.execute(&documents);
        let page: Vec<Value> = rows.iter().skip(offset).take(page_size).cloned().collect();
        let next = offset + page.len();
        let item_type = if query.selects_whole_documents() {
            "twin"
        } else {
            "raw"
        };
        let mut reply =
            Reply::ok(Value::Array(page)).with_header("x-ms-item-type", item_type.into());
        // No header on the last page: Node decides "more results" by its presence.
        if next < rows.len() {
            reply = reply.with_header("x-ms-continuation", encode_continuation(next));
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_round_trip() {
        assert_eq!(decode_continuation(&encode_continuation(250)), Some(250));
        assert_eq!(decode_continuation("garbage!"), None);
        assert_eq!(
            decode_continuation(&URL_SAFE_NO_PAD.encode("other:1")),
            None
        );
    }
}

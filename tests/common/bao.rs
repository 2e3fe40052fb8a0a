//! A small async OpenBao client for the integration tests (tests/csi.rs, tests/k8s.rs):
//! root-token HTTP calls that panic with the method, path and status on failure.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};

#[derive(Clone)]
pub(crate) struct Bao {
    pub(crate) addr: String,
    pub(crate) token: String,
    pub(crate) http: reqwest::Client,
}

impl Bao {
    pub(crate) fn new(addr: &str, token: &str) -> Self {
        Self {
            addr: addr.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        }
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}/v1/{path}", self.addr);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("X-Vault-Token", &self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e} (is OpenBao running?)"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub(crate) async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "OpenBao {method} {path}: {status} {v}"
        );
        v
    }

    pub(crate) async fn kv2_put(&self, name: &str, data: Value) {
        self.ok(
            reqwest::Method::POST,
            &format!("secret/data/{name}"),
            Some(&json!({ "data": data })),
        )
        .await;
    }
}

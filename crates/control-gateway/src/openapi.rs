//! The OpenAPI 3.1 document of the HTTP API: `docs/openapi.json`, embedded
//! and served at `/api/v1/openapi.json`.

/// The document, as written in `docs/openapi.json`.
pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::DOCUMENT;
    use crate::http::{ROUTES, router};
    use crate::ops::Shared;
    use crate::{auth, bus, presence};

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON")
    }

    /// A gateway whose bus is not connected (nothing listens on port 1).
    /// The read-only token of [`offline_router`], as a header.
    const READ: &[(&str, &str)] = &[("authorization", "Bearer r")];

    async fn offline_router() -> axum::Router {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .expect("a client that connects later");
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        router(Arc::new(Shared {
            bus: bus::BusApi::new(client),
            tokens: auth::Tokens::new(Some("t"), &["r"]),
            sessions: presence::Sessions::new(),
            groups: presence::GroupsSeen::new(),
            shutdown: stopped,
        }))
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body)).expect("request");
        let res = app.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[test]
    fn the_document_is_openapi_3_1_and_lists_exactly_the_routes() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut listed = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if method == "parameters" {
                    continue;
                }
                assert!(op["responses"].is_object(), "{method} {path} has responses");
                listed.insert((method.to_uppercase(), path.clone()));
            }
        }
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(listed, routed);
    }

    /// `schema`, with a `$ref` followed.
    fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
        match schema["$ref"].as_str() {
            Some(r) => {
                let name = r.trim_start_matches("#/components/schemas/");
                &doc["components"]["schemas"][name]
            }
            None => schema,
        }
    }

    /// Checks that `value` has every field `schema` requires and no field it
    /// does not list, down through objects, arrays, `allOf` and `oneOf`.
    fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
        let schema = resolve(doc, schema);
        if let Some(variants) = schema["oneOf"].as_array() {
            if value.is_null() {
                return;
            }
            let object = variants.iter().find(|v| v["type"] == "object");
            return conforms(doc, object.expect("an object variant"), value, at);
        }
        if let Some(items) = value.as_array() {
            for (i, item) in items.iter().enumerate() {
                conforms(doc, &schema["items"], item, &format!("{at}[{i}]"));
            }
            return;
        }
        let Some(object) = value.as_object() else {
            return;
        };
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        let parts: Vec<&Value> = match schema["allOf"].as_array() {
            Some(all) => all.iter().map(|p| resolve(doc, p)).collect(),
            None => vec![schema],
        };
        for part in parts {
            if let Some(p) = part["properties"].as_object() {
                properties.extend(p.clone());
            }
            if let Some(r) = part["required"].as_array() {
                required.extend(r.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        for key in required {
            assert!(object.contains_key(&key), "{at}: `{key}` is required");
        }
        for (key, v) in object {
            let field = properties
                .get(key)
                .unwrap_or_else(|| panic!("{at}: `{key}` is not in the document"));
            conforms(doc, field, v, &format!("{at}.{key}"));
        }
    }

    /// The schema of the success answer of `method path`.
    fn answer_schema<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
        let responses = &doc["paths"][path][method]["responses"];
        let ok = if responses["200"].is_object() {
            &responses["200"]
        } else {
            &responses["202"]
        };
        &ok["content"]["application/json"]["schema"]
    }

    #[test]
    fn every_answer_the_gateway_serialises_is_what_the_document_describes() {
        use crate::answers::*;
        let doc = document();
        let roster = understudy_protocol::roster::examples::roster();
        let group = roster.group.clone();
        let device = roster.devices[0].device.clone();
        let g = "/api/v1/groups/{group}";
        let d = "/api/v1/groups/{group}/devices/{device}";
        let cases: Vec<(&str, String, Value)> = vec![
            (
                "get",
                "/api/v1/groups".into(),
                serde_json::to_value(GroupList {
                    groups: vec![GroupSeen {
                        group: group.clone(),
                        devices: 3,
                    }],
                })
                .unwrap(),
            ),
            (
                "get",
                g.into(),
                serde_json::to_value(StatusDocument::from(roster.clone())).unwrap(),
            ),
            (
                "get",
                format!("{g}/devices"),
                serde_json::to_value(DeviceList {
                    devices: roster.devices.clone(),
                })
                .unwrap(),
            ),
            (
                "get",
                d.into(),
                serde_json::to_value(&roster.devices[1]).unwrap(),
            ),
            (
                "get",
                format!("{d}/score"),
                serde_json::to_value(ScoreAnswer {
                    group: group.clone(),
                    device: device.clone(),
                    score: understudy_protocol::Score::new(9),
                })
                .unwrap(),
            ),
            (
                "put",
                format!("{d}/score"),
                serde_json::to_value(SetScoreAnswer {
                    group: group.clone(),
                    device: device.clone(),
                    score: understudy_protocol::Score::new(9),
                    server: None,
                })
                .unwrap(),
            ),
            (
                "put",
                format!("{d}/online"),
                serde_json::to_value(OnlineAnswer {
                    group: group.clone(),
                    device,
                    online: false,
                })
                .unwrap(),
            ),
            (
                "post",
                format!("{g}/election"),
                serde_json::to_value(TriggerAnswer {
                    group: group.clone(),
                    triggered: true,
                    held: true,
                    device: roster.devices[0].device.clone(),
                })
                .unwrap(),
            ),
        ];
        // The hold: never set, held with every field, lifted; and the status
        // with it.
        let record = understudy_protocol::hold::HoldRecord {
            schema: 1,
            group: group.clone(),
            held: true,
            until_ms: Some(1_767_229_200_000),
            reason: Some("show".into()),
            set_by: Some("gateway".into()),
            since_ms: 1_767_225_600_000,
        };
        let mut cases = cases;
        for rec in [None, Some(record.clone())] {
            let answer = HoldAnswer {
                group: group.clone(),
                state: HoldState::new(rec.clone(), 1_767_225_600_001),
            };
            for method in ["get", "put"] {
                cases.push((
                    method,
                    format!("{g}/hold"),
                    serde_json::to_value(&answer).unwrap(),
                ));
            }
            let mut status = StatusDocument::from(roster.clone());
            status.hold = Some(answer.state.clone());
            cases.push(("get", g.into(), serde_json::to_value(status).unwrap()));
        }
        // The ledger: an entry with every field, one with none of the
        // optional ones, and a group without a ledger.
        let full = ledger_entry();
        let mut bare = ledger_entry();
        bare.kind = understudy_protocol::ledger::LedgerKind::Kept;
        bare.previous = None;
        bare.timings = Default::default();
        for entries in [vec![full, bare], vec![]] {
            cases.push((
                "get",
                format!("{g}/ledger"),
                serde_json::to_value(LedgerAnswer {
                    group: group.clone(),
                    entries,
                    more: true,
                })
                .unwrap(),
            ));
        }
        // Why: a server with its entry, and nobody serving.
        let g_name: understudy_protocol::GroupName = group.clone();
        let lease = ("dev-2".parse().unwrap(), ledger_entry().term);
        for why in [
            understudy_bus::why::explain(&g_name, Some(&lease), &[ledger_entry()], None, 0),
            understudy_bus::why::explain(&g_name, None, &[], None, 0),
        ] {
            cases.push((
                "get",
                format!("{g}/why"),
                serde_json::to_value(why).unwrap(),
            ));
        }
        for (method, path, value) in cases {
            let schema = answer_schema(&doc, method, &path);
            assert!(schema.is_object(), "{method} {path} documents its answer");
            conforms(&doc, schema, &value, &format!("{method} {path}"));
        }
    }

    /// A ledger entry with every field set.
    fn ledger_entry() -> understudy_protocol::ledger::LedgerEntry {
        use understudy_protocol::ledger::{LedgerEntry, PreviousServer};
        use understudy_protocol::messages::StepDownReason;
        let mut e = LedgerEntry::example();
        e.group = "stage".parse().unwrap();
        e.held = true;
        e.previous = Some(PreviousServer {
            stepped_down: Some(StepDownReason::Shutdown),
            ..e.previous.clone().unwrap()
        });
        e
    }

    /// Every cause, rule, kind and step-down reason an entry can carry is
    /// one the document lists.
    #[test]
    fn the_ledger_entry_schema_lists_every_value_of_its_enums() {
        use understudy_protocol::ledger::{LedgerKind, LedgerRule};
        use understudy_protocol::messages::{ElectionReason, StepDownReason};
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let listed = |schema: &str, field: &str, value: Value| {
            let values = schemas[schema]["properties"][field]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{schema}.{field} has an enum"));
            assert!(values.contains(&value), "{schema}.{field}: {value}");
        };
        for cause in [
            ElectionReason::Startup,
            ElectionReason::ServerLost,
            ElectionReason::NoServer,
            ElectionReason::ScoreChanged,
            ElectionReason::Preemption,
            ElectionReason::HandOver,
            ElectionReason::Operator,
            ElectionReason::Other,
        ] {
            listed("LedgerEntry", "cause", serde_json::to_value(cause).unwrap());
        }
        for rule in [
            LedgerRule::OnlyCandidate,
            LedgerRule::HighestScore,
            LedgerRule::LowerMac,
            LedgerRule::DeviceId,
            LedgerRule::NamedSuccessor,
            LedgerRule::Other,
        ] {
            listed("LedgerEntry", "rule", serde_json::to_value(rule).unwrap());
        }
        for kind in [LedgerKind::Elected, LedgerKind::Kept, LedgerKind::Other] {
            listed("LedgerEntry", "kind", serde_json::to_value(kind).unwrap());
        }
        for reason in [
            StepDownReason::HandOver,
            StepDownReason::LeaseLost,
            StepDownReason::Deposed,
            StepDownReason::Offline,
            StepDownReason::ScoreZero,
            StepDownReason::Shutdown,
            StepDownReason::Other,
        ] {
            listed(
                "PreviousServer",
                "stepped_down",
                serde_json::to_value(reason).unwrap(),
            );
        }
    }

    #[test]
    fn every_error_code_is_in_the_error_schema() {
        let doc = document();
        let codes = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]
            ["enum"];
        for code in [
            "unauthorized",
            "forbidden",
            "invalid_json",
            "score_out_of_range",
            "invalid_name",
            "invalid_hold",
            "held",
            "unknown_group",
            "unknown_device",
            "unsupported_media_type",
            "payload_too_large",
            "not_found",
            "method_not_allowed",
            "upgrade_required",
            "device_unavailable",
            "bus_unavailable",
        ] {
            assert!(
                codes
                    .as_array()
                    .is_some_and(|c| c.contains(&Value::from(code))),
                "{code}"
            );
        }
    }

    #[tokio::test]
    async fn the_router_serves_every_listed_route() {
        let app = offline_router().await;
        for (method, path) in ROUTES {
            let path = path
                .replace("{group}", "stage")
                .replace("{device}", "dev-1");
            let auth = [("authorization", "Bearer t")];
            let (status, body) = call(&app, method, &path, &auth, Vec::new()).await;
            let code = body["error"]["code"].as_str().unwrap_or("");
            assert!(
                code != "not_found" && code != "method_not_allowed",
                "{method} {path}: {status} {body}"
            );
        }
    }

    /// schemathesis (tests/gateway_schema_e2e.rs) sent
    /// `last=3121425509202003675433664512`, valid for a document that gave no
    /// maximum, and the gateway refused it (400): the document now gives the
    /// gateway's bound, the largest JetStream sequence (u64::MAX), for
    /// `after`, `last` and `Last-Event-ID`, and the gateway takes exactly that.
    #[tokio::test]
    async fn event_stream_numbers_are_documented_up_to_the_largest_the_gateway_takes() {
        let doc = document();
        let max = Value::from(u64::MAX);
        let params = &doc["components"]["parameters"];
        assert_eq!(params["after"]["schema"]["maximum"], max);
        assert_eq!(params["last"]["schema"]["maximum"], max);
        let sse = doc["paths"]["/api/v1/groups/{group}/events"]["parameters"]
            .as_array()
            .expect("parameters");
        let last_event_id = sse
            .iter()
            .find(|p| p["name"] == "Last-Event-ID")
            .expect("Last-Event-ID");
        assert_eq!(last_event_id["schema"]["maximum"], max);

        let app = offline_router().await;
        let ws = "/api/v1/groups/stage/events/ws";
        let over = "18446744073709551616";
        for key in ["after", "last"] {
            // Taken (then refused only for want of an upgrade), one more is not.
            let (status, _) = call(
                &app,
                "GET",
                &format!("{ws}?{key}={}", u64::MAX),
                READ,
                vec![],
            )
            .await;
            assert_eq!(status, StatusCode::UPGRADE_REQUIRED, "{key}=u64::MAX");
            let (status, body) =
                call(&app, "GET", &format!("{ws}?{key}={over}"), READ, vec![]).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_json")),
                "{key}={over}"
            );
        }
        let sse = "/api/v1/groups/stage/events";
        let max_text = u64::MAX.to_string();
        let (status, body) = call(
            &app,
            "GET",
            sse,
            &[("last-event-id", &max_text), READ[0]],
            vec![],
        )
        .await;
        // Past the header's check, to the bus (not connected here).
        assert_eq!(body["error"]["code"], "bus_unavailable", "{status}");
        let (status, body) = call(
            &app,
            "GET",
            sse,
            &[("last-event-id", over), READ[0]],
            vec![],
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_json"))
        );
    }

    /// schemathesis sent `{"score": 140.0}` (an integer, as JSON Schema
    /// counts them) and the gateway answered 422 `score_out_of_range`.
    #[tokio::test]
    async fn a_score_of_140_point_0_is_set_not_refused_as_out_of_range() {
        let app = offline_router().await;
        let score = "/api/v1/groups/stage/devices/dev-1/score";
        let headers = [
            ("content-type", "application/json"),
            ("authorization", "Bearer t"),
        ];
        for body in ["{\"score\":140.0}", "{\"score\":1e2}"] {
            let (status, doc) = call(&app, "PUT", score, &headers, body.into()).await;
            // Valid: on to the device (the bus is not connected here).
            assert_eq!(
                (status, doc["error"]["code"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("bus_unavailable")),
                "{body}"
            );
        }
        let (status, doc) = call(&app, "PUT", score, &headers, b"{\"score\":256.0}".to_vec()).await;
        assert_eq!(
            (status, doc["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("score_out_of_range"))
        );
    }

    #[tokio::test]
    async fn nothing_answers_in_plain_text() {
        let app = offline_router().await;
        let score = "/api/v1/groups/stage/devices/dev-1/score";
        let json = ("content-type", "application/json");
        let auth = ("authorization", "Bearer t");
        let read = ("authorization", "Bearer r");
        type Case<'a> = (
            &'a str,
            &'a str,
            Vec<(&'a str, &'a str)>,
            Vec<u8>,
            u16,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            ("GET", "/nope", vec![], vec![], 404, "not_found"),
            (
                "DELETE",
                "/api/v1/groups",
                vec![],
                vec![],
                405,
                "method_not_allowed",
            ),
            (
                "PUT",
                score,
                vec![json],
                b"{\"score\":1}".to_vec(),
                401,
                "unauthorized",
            ),
            (
                "PUT",
                score,
                vec![read, json],
                b"{\"score\":1}".to_vec(),
                403,
                "forbidden",
            ),
            (
                "PUT",
                score,
                vec![auth],
                b"{\"score\":1}".to_vec(),
                415,
                "unsupported_media_type",
            ),
            (
                "PUT",
                score,
                vec![auth, json],
                b"{\"score\":".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "PUT",
                score,
                vec![auth, json],
                vec![b' '; 20_000],
                413,
                "payload_too_large",
            ),
            (
                "PUT",
                score,
                vec![auth, json],
                b"{\"score\":256}".to_vec(),
                422,
                "score_out_of_range",
            ),
            (
                "PUT",
                score,
                vec![auth, json],
                b"{\"score\":\"ten\"}".to_vec(),
                400,
                "invalid_json",
            ),
            (
                "GET",
                "/api/v1/groups/a%2Eb",
                vec![read],
                vec![],
                400,
                "invalid_name",
            ),
            (
                "GET",
                "/api/v1/groups/stage/events/ws",
                vec![read],
                vec![],
                426,
                "upgrade_required",
            ),
            (
                "GET",
                "/api/v1/groups/stage/ledger?limit=0",
                vec![read],
                vec![],
                400,
                "invalid_json",
            ),
            (
                "GET",
                "/api/v1/groups/stage/ledger?since=garbage",
                vec![read],
                vec![],
                400,
                "invalid_json",
            ),
            (
                "GET",
                "/api/v1/groups/stage/ledger?limit=5&since=2026-01-01T00:00:00Z",
                vec![read],
                vec![],
                503,
                "bus_unavailable",
            ),
            (
                "GET",
                "/api/v1/groups/stage/events?after=x",
                vec![read],
                vec![],
                400,
                "invalid_json",
            ),
            (
                "GET",
                "/api/v1/groups/stage",
                vec![],
                vec![],
                401,
                "unauthorized",
            ),
            (
                "GET",
                "/api/v1/groups/stage",
                vec![read],
                vec![],
                503,
                "bus_unavailable",
            ),
            (
                "PUT",
                score,
                vec![auth, json],
                b"{\"score\":1}".to_vec(),
                503,
                "bus_unavailable",
            ),
        ];
        for (method, path, headers, body, status, code) in cases {
            let (got, doc) = call(&app, method, path, &headers, body).await;
            assert_eq!(
                (got.as_u16(), doc["error"]["code"].as_str()),
                (status, Some(code)),
                "{method} {path}: {doc}"
            );
        }
    }

    #[test]
    fn the_document_says_which_routes_need_a_token_and_which_role() {
        let doc = document();
        for (method, path) in ROUTES {
            let op = &doc["paths"][path][method.to_lowercase()];
            let responses = &op["responses"];
            if path.starts_with("/api/") {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{ "bearer": [] }]),
                    "{method} {path}"
                );
                assert!(responses["401"].is_object(), "{method} {path} lists 401");
                assert_eq!(
                    responses["403"].is_object(),
                    *method != "GET",
                    "{method} {path}: 403 listed exactly on writes"
                );
            } else {
                assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
            }
        }
    }

    #[tokio::test]
    async fn every_api_route_needs_a_token_and_a_read_only_token_only_reads() {
        let app = offline_router().await;
        let send = |method: &str, path: &str, auth: Option<&str>| {
            let mut req = Request::builder().method(method).uri(path);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let req = req.body(Body::empty()).expect("request");
            app.clone().oneshot(req)
        };
        for (method, path) in ROUTES {
            let path = path
                .replace("{group}", "stage")
                .replace("{device}", "dev-1");
            if !path.starts_with("/api/") {
                let res = send(method, &path, None).await.expect("infallible");
                assert_eq!(res.status(), StatusCode::OK, "{method} {path} is open");
                continue;
            }
            for auth in [None, Some("Bearer wrong"), Some("Basic dDp0")] {
                let res = send(method, &path, auth).await.expect("infallible");
                assert_eq!(
                    res.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} {auth:?}"
                );
                let challenge = res.headers().get("www-authenticate");
                assert!(
                    challenge.is_some_and(|c| c.as_bytes().starts_with(b"Bearer")),
                    "{method} {path}: {challenge:?}"
                );
            }
            let res = send(method, &path, Some("Bearer r"))
                .await
                .expect("infallible");
            if *method == "GET" {
                assert!(
                    res.status() != StatusCode::UNAUTHORIZED
                        && res.status() != StatusCode::FORBIDDEN,
                    "{method} {path}: a read-only token reads ({})",
                    res.status()
                );
            } else {
                assert_eq!(res.status(), StatusCode::FORBIDDEN, "{method} {path}");
            }
            let res = send(method, &path, Some("Bearer t"))
                .await
                .expect("infallible");
            assert!(
                res.status() != StatusCode::UNAUTHORIZED && res.status() != StatusCode::FORBIDDEN,
                "{method} {path}: the admin token may ({})",
                res.status()
            );
        }
    }
}

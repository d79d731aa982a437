//! The gateway's HTTP input (docs/openapi.json): a request body as the
//! mutating routes read it (a JSON object; `score` for PUT .../score,
//! `online` for PUT .../online), the same bytes as the path's group and
//! device names and as an event stream's query. Every refusal is a client
//! error (4xx) with a JSON error document; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use understudy_control_gateway::http::stream_query;
use understudy_control_gateway::{ApiError, input};

fn client_error<T>(r: Result<T, ApiError>) {
    if let Err(e) = r {
        assert!(e.status().is_client_error(), "{e:?}");
        assert!(e.document().is_object());
    }
}

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() <= input::MAX_BODY {
        match input::object(bytes) {
            Ok(map) => {
                client_error(input::field(&map, "score").and_then(input::score));
                client_error(input::boolean(&map, "online"));
            }
            Err(e) => client_error::<()>(Err(e)),
        }
    }
    let text = String::from_utf8_lossy(bytes);
    client_error(input::group(&text));
    client_error(input::device(&text));
    client_error(stream_query(Some(&text)));
});

//! The gateway's TCP control protocol (docs/control.md): a connection's
//! bytes are cut into lines by the gateway's own line reader, through a read
//! buffer of 1–64 bytes (the first input byte) so lines arrive split at any
//! point; each line is read as a request as the connection does — a JSON
//! object, then `cmd` and the fields that command reads. Every refusal is a
//! client error (4xx) whose reply line is valid JSON; never a panic, and no
//! line kept is over the limit or holds a newline.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tokio::io::BufReader;
use understudy_control_gateway::tcp::{Line, next_line};
use understudy_control_gateway::{ApiError, input};

/// Runs a future over in-memory bytes: it never waits, so one poll ends it.
fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("reading from memory waited"),
    }
}

fn refused(id: &Value, e: &ApiError) {
    assert!(e.status().is_client_error(), "{e:?}");
    let line = json!({ "id": id, "ok": false, "error": e.body() }).to_string();
    assert!(serde_json::from_str::<Value>(&line).is_ok());
}

/// What each command reads of its request, in the order the gateway does.
fn command(map: &Map<String, Value>) -> Result<(), ApiError> {
    let cmd = input::string(map, "cmd")?;
    let group = || input::group(input::string(map, "group")?);
    let device = || input::device(input::string(map, "device")?);
    match cmd {
        "auth" => input::string(map, "token").map(drop),
        "groups" => Ok(()),
        "status" | "devices" | "trigger" => group().map(drop),
        "get_score" => group().and(device()).map(drop),
        "set_score" => {
            let _ = (group()?, device()?);
            input::score(input::field(map, "score")?).map(drop)
        }
        "set_online" => {
            let _ = (group()?, device()?);
            input::boolean(map, "online").map(drop)
        }
        "subscribe" => {
            group()?;
            input::count(map, "after")?;
            input::count(map, "last").map(drop)
        }
        other => Err(ApiError::NotFound(format!("unknown command {other:?}"))),
    }
}

fn request(text: &[u8]) {
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let map = match input::object(text) {
        Ok(m) => m,
        Err(e) => return refused(&Value::Null, &e),
    };
    let id = map.get("id").cloned().unwrap_or(Value::Null);
    if let Err(e) = command(&map) {
        refused(&id, &e);
    }
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&capacity, stream)) = bytes.split_first() else {
        return;
    };
    let mut reader = BufReader::with_capacity(usize::from(capacity % 64) + 1, stream);
    let newlines = stream.iter().filter(|b| **b == b'\n').count();
    let mut lines = 0;
    while let Some(line) = now(next_line(&mut reader)).expect("reading from memory fails") {
        lines += 1;
        assert!(lines <= newlines + 1, "more lines than the stream holds");
        match line {
            Line::TooLong => refused(
                &Value::Null,
                &ApiError::PayloadTooLarge("the line is longer than the limit".into()),
            ),
            Line::Text(text) => {
                assert!(text.len() <= input::MAX_BODY && !text.contains(&b'\n'));
                request(&text);
            }
        }
    }
});

//! One-shot control commands: status, score, election trigger, online and
//! offline, and following election events. All through the bus.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, consumer};
use clap::{Args, Subcommand};
use futures::StreamExt;
use understudy_protocol::messages::{
    self, ControlOp, ControlReply, ControlRequest, ElectionEvent, ElectionEventKind, Trigger,
    TriggerReply,
};
use understudy_protocol::roster::RosterReply;
use understudy_protocol::{DeviceId, GroupName, Problem, SCHEMA_VERSION, Score, subjects};

use crate::Bus;
use crate::settings::connect_once;
use understudy_bus::NatsSettings;

const ANSWER_WITHIN: Duration = Duration::from_secs(3);

/// Which device of which group.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The project group.
    #[arg(long, env = "UNDERSTUDY_GROUP")]
    pub group: String,
    /// The device.
    #[arg(long)]
    pub device: String,
    /// Who makes the change, as kept with the device's stored setting
    /// (default: `$USER`).
    #[arg(long = "by", env = "UNDERSTUDY_OPERATOR")]
    pub by: Option<String>,
    #[command(flatten)]
    pub bus: Bus,
}

/// `understudy score …`
#[derive(Debug, Subcommand)]
pub enum ScoreCmd {
    /// Set a device's score (0–255); an election follows at once. The
    /// device stores it in its group's settings bucket, so it survives a
    /// restart of the device (until `score reset`).
    Set {
        #[command(flatten)]
        device: DeviceArgs,
        /// The new score, 0–255 (0 = client only).
        #[arg(allow_negative_numbers = true)]
        score: String,
    },
    /// Forget the score an operator set: the device returns to its
    /// configured score (`--score` at start-up) and an election follows.
    Reset {
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Print a device's score.
    Get {
        #[command(flatten)]
        device: DeviceArgs,
    },
}

/// `understudy election …`
#[derive(Debug, Subcommand)]
pub enum ElectionCmd {
    /// Ask every device of the group to hold an election now (refused
    /// while the group is under a show hold, unless `--force`).
    Trigger {
        /// The project group.
        #[arg(long, env = "UNDERSTUDY_GROUP")]
        group: String,
        /// Trigger even though the group is held (`understudy hold`).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        bus: Bus,
    },
}

fn names(group: &str, device: &str) -> Result<(GroupName, DeviceId)> {
    Ok((group.parse()?, device.parse()?))
}

async fn control(d: &DeviceArgs, op: ControlOp) -> Result<ControlReply> {
    let (group, device) = names(&d.group, &d.device)?;
    let client = connect_once(&d.bus.settings(), "understudy-ctl").await?;
    let set_by =
        d.by.clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|s| !s.is_empty());
    let req = ControlRequest {
        schema: SCHEMA_VERSION,
        op,
        set_by,
    };
    let subject = subjects::control(&group, &device);
    let msg = tokio::time::timeout(
        ANSWER_WITHIN,
        client.request(subject, messages::encode(&req).into()),
    )
    .await
    .map_err(|_| anyhow!("device {device} of group {group} did not answer within 3 s"))?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            anyhow!("device {device} of group {group} is not running (no answer on the bus)")
        }
        _ => anyhow!("asking device {device} of group {group}: {e}"),
    })?;
    let reply: ControlReply = messages::decode(&msg.payload)?;
    if let Some(refusal) = reply.refusal() {
        bail!(
            "device {device} refused ({}): {}",
            refusal.code,
            refusal.message
        );
    }
    Ok(reply)
}

/// `understudy score set|get`.
pub async fn score(cmd: ScoreCmd) -> Result<()> {
    match cmd {
        ScoreCmd::Set { device, score } => {
            let score: Score = score.parse()?;
            let reply = control(&device, ControlOp::SetScore { score }).await?;
            let server = reply
                .state
                .and_then(|s| s.server)
                .map_or("none yet".to_string(), |d| d.to_string());
            println!(
                "score of {} set to {score}; an election follows (server now: {server})",
                device.device
            );
        }
        ScoreCmd::Reset { device } => {
            let reply = control(&device, ControlOp::ResetScore).await?;
            let state = reply
                .state
                .ok_or_else(|| anyhow!("the device sent no state"))?;
            let server = state
                .server
                .map_or("none yet".to_string(), |d| d.to_string());
            println!(
                "score of {} reset to its configured {}; an election follows (server now: {server})",
                device.device, state.score
            );
        }
        ScoreCmd::Get { device } => {
            let reply = control(&device, ControlOp::Get).await?;
            let state = reply
                .state
                .ok_or_else(|| anyhow!("the device sent no state"))?;
            println!("{}", state.score);
        }
    }
    Ok(())
}

/// `understudy online|offline`.
pub async fn set_online(d: DeviceArgs, online: bool) -> Result<()> {
    control(&d, ControlOp::SetOnline { online }).await?;
    println!(
        "device {} of group {} is now {}",
        d.device,
        d.group,
        if online { "online" } else { "offline" }
    );
    Ok(())
}

/// `understudy election trigger`.
pub async fn election(cmd: ElectionCmd) -> Result<()> {
    match cmd {
        ElectionCmd::Trigger { group, force, bus } => {
            let group: GroupName = group.parse()?;
            let client = connect_once(&bus.settings(), "understudy-ctl").await?;
            let t = Trigger {
                schema: SCHEMA_VERSION,
                by: Some("understudy election trigger".into()),
                force,
            };
            // Every device acts on the trigger; the first answer says
            // whether the group's devices took it.
            let msg = tokio::time::timeout(
                ANSWER_WITHIN,
                client.request(subjects::trigger(&group), messages::encode(&t).into()),
            )
            .await
            .map_err(|_| anyhow!("no device of group {group} answered within 3 s"))?
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    anyhow!("no device of group {group} is running (no answer on the bus)")
                }
                _ => anyhow!("triggering an election in group {group}: {e}"),
            })?;
            let reply: TriggerReply =
                messages::decode(&msg.payload).context("cannot read the device's answer")?;
            if !reply.acted {
                bail!(
                    "group {group} is under a show hold, so no election was triggered \
                     (held: use --force to trigger anyway, or `understudy hold off`)"
                );
            }
            let forced = if force && reply.held {
                " past the show hold"
            } else {
                ""
            };
            println!("election triggered in group {group}{forced}");
            Ok(())
        }
    }
}

/// `understudy status`: asks any device's discovery service for the roster.
pub async fn status(nats: &NatsSettings, group: &str, json: bool) -> Result<()> {
    let group: GroupName = group.parse()?;
    let client = connect_once(nats, "understudy-ctl").await?;
    let msg = tokio::time::timeout(
        ANSWER_WITHIN,
        client.request(subjects::roster(&group), "".into()),
    )
    .await
    .map_err(|_| anyhow!("no device of group {group} answered within 3 s"))?
    .map_err(|e| match e.kind() {
        async_nats::RequestErrorKind::NoResponders => {
            anyhow!("no device of group {group} is running (no answer on the bus)")
        }
        _ => anyhow!("asking group {group} for its status: {e}"),
    })?;
    let roster: RosterReply =
        messages::decode(&msg.payload).context("cannot read the roster reply")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&roster)?);
    } else {
        print!("{}", render_status(&roster));
        // The show hold, from the group's settings bucket.
        let now = understudy_bus::unix_ms(std::time::SystemTime::now());
        match crate::hold::read_with(&client, &group).await {
            Ok(Some(rec)) => println!("hold: {}", crate::hold::describe(&rec, now)),
            Ok(None) => println!("hold: group {group}: not held (no hold was ever set)"),
            Err(e) => println!("hold: unknown ({e:#})"),
        }
    }
    Ok(())
}

fn render_status(roster: &RosterReply) -> String {
    let mut out = String::new();
    let server = roster
        .server
        .as_ref()
        .map_or("none".into(), |s| format!("{} (term {})", s.device, s.term));
    let c = &roster.counts;
    out.push_str(&format!(
        "group {}: server {server}\ncounts: {} online, {} offline, {} missing; {} server(s), {} client(s); {} GUI, {} control session(s)\n",
        roster.group,
        c.devices_online,
        c.devices_offline,
        c.devices_missing,
        c.servers,
        c.clients,
        c.gui_sessions,
        c.control_sessions,
    ));
    out.push_str(&format!(
        "{:<20} {:<17} {:>5} {:<6} {:<7} {:<6} {:>9}  {}\n",
        "DEVICE", "MAC", "SCORE", "ROLE", "ONLINE", "COLOUR", "LAST SEEN", "PROBLEMS"
    ));
    for d in &roster.devices {
        let problems: Vec<String> = d.problems.iter().map(Problem::to_string).collect();
        let seen = format!("{:.1}s ago", d.last_seen_ms_ago as f64 / 1000.0);
        let online = match (d.live, d.online) {
            (false, _) => "MISSING",
            (true, true) => "yes",
            (true, false) => "no",
        };
        out.push_str(&format!(
            "{:<20} {:<17} {:>5} {:<6} {:<7} {:<6} {:>9}  {}\n",
            d.device.as_str(),
            d.mac.to_string(),
            d.score.to_string(),
            d.role.to_string(),
            online,
            d.colour.to_string(),
            seen,
            problems.join("; ")
        ));
    }
    out
}

/// One line for an election event, as people read it.
pub fn describe(e: &ElectionEvent) -> String {
    let what = match &e.kind {
        ElectionEventKind::ElectionStarted { reason } => format!("election started ({reason:?})"),
        ElectionEventKind::ServerElected {
            device,
            score,
            term,
            reason,
            ..
        } => format!("SERVER ELECTED: {device} (score {score}, term {term}, {reason:?})"),
        ElectionEventKind::ServerLost {
            device,
            term,
            silent_ms,
        } => match silent_ms {
            Some(ms) => format!("server lost: {device} (term {term}, silent for {ms} ms)"),
            None => format!("server lost: {device} (term {term})"),
        },
        ElectionEventKind::SteppedDown {
            device,
            term,
            reason,
        } => format!("stepped down: {device} (term {term}, {reason:?})"),
        ElectionEventKind::HandedOver { from, to, term } => {
            format!("handed over: {from} -> {to} (term {term})")
        }
        ElectionEventKind::NoViableCandidate => {
            "no viable candidate: every online score is 0".into()
        }
        ElectionEventKind::HoldChanged {
            held: true,
            until_ms,
            reason,
            set_by,
        } => format!(
            "SHOW HOLD ON{}{}{}",
            until_ms.map_or(String::new(), |u| format!(
                " until {}",
                crate::hold::rfc3339(u)
            )),
            reason
                .as_deref()
                .map_or(String::new(), |r| format!(", reason: {r}")),
            set_by
                .as_deref()
                .map_or(String::new(), |b| format!(", set by {b}")),
        ),
        ElectionEventKind::HoldChanged {
            held: false,
            set_by,
            ..
        } => format!(
            "show hold lifted{}",
            set_by
                .as_deref()
                .map_or(String::new(), |b| format!(" by {b}"))
        ),
        ElectionEventKind::Unknown => "an event this version does not know".into(),
    };
    format!("[{}] {} reports {what}", e.group, e.reporter)
}

/// `understudy events`: replays the last events of the group from the
/// JetStream stream, then follows live ones.
pub async fn events(
    nats: &NatsSettings,
    group: &str,
    last: u64,
    json: bool,
    count: Option<u64>,
) -> Result<()> {
    let group: GroupName = group.parse()?;
    let client = connect_once(nats, "understudy-events").await?;
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(subjects::EVENTS_STREAM)
        .await
        .with_context(|| {
            format!(
                "no event stream yet ({}): is any device running?",
                subjects::EVENTS_STREAM
            )
        })?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subjects::election_events(&group),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("cannot read the event stream")?;
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read the event stream")?;
    let mut printed = 0u64;
    while let Some(msg) = messages.next().await {
        let msg = msg.context("reading the event stream")?;
        let pending = msg.info().map(|i| i.pending).unwrap_or(0);
        if pending >= last {
            continue;
        }
        match messages::decode::<ElectionEvent>(&msg.payload) {
            Ok(_) if json => println!("{}", String::from_utf8_lossy(&msg.payload).trim_end()),
            Ok(e) => println!("{}", describe(&e)),
            Err(err) => eprintln!("skipping an event: {err}"),
        }
        printed += 1;
        if count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A roster reply as docs/bus.md shows it: one live server, one missing
    /// client with a problem.
    const REPLY: &str = r#"{
      "schema": 1, "group": "stage", "reporter": "desk-1",
      "server": { "device": "desk-1", "term": 7 },
      "devices": [
        { "device": "desk-1", "group": "stage", "instance": "00000000000000a1",
          "mac": "02:00:00:00:00:01", "score": 200, "online": true, "role": "server",
          "term": 7, "in_grace": false, "colour": "blue", "problems": [],
          "live": true, "last_seen_ms_ago": 40, "sent_at_ms": 1767225600000,
          "interval_ms": 100, "duplicate": false, "expected": true },
        { "device": "desk-2", "group": "stage", "instance": "00000000000000a2",
          "mac": "02:00:00:00:00:02", "score": 100, "online": true, "role": "client",
          "term": 7, "in_grace": false, "colour": "red", "problems": [{"code": "no_server"}],
          "live": false, "last_seen_ms_ago": 2500, "sent_at_ms": 1767225600000,
          "interval_ms": 100, "duplicate": false, "expected": true }
      ],
      "counts": { "devices_online": 1, "devices_offline": 0, "devices_missing": 1,
                  "clients": 0, "servers": 1, "gui_sessions": 2, "control_sessions": 0 },
      "network_counts": { "devices_online": 1, "devices_offline": 0, "devices_missing": 1,
                  "clients": 0, "servers": 1, "gui_sessions": 2, "control_sessions": 0 }
    }"#;

    #[test]
    fn status_shows_the_server_the_counts_and_each_device() {
        let roster: RosterReply = messages::decode(REPLY.as_bytes()).expect("the documented reply");
        let text = render_status(&roster);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "group stage: server desk-1 (term 7)");
        assert!(lines[1].starts_with("counts: 1 online, 0 offline, 1 missing; 1 server(s)"));
        assert!(lines[1].ends_with("2 GUI, 0 control session(s)"));
        assert!(lines[3].starts_with("desk-1 ") && lines[3].contains(" yes "));
        assert!(lines[4].contains("MISSING") && lines[4].contains("2.5s ago"));
        assert!(lines[4].ends_with("Project group has no server"));
    }
}

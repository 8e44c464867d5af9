//! A rust-libp2p peer process driven over stdin/stdout with JSON lines: physarum's rust-libp2p
//! interop partner. It speaks the partner protocol of tests/interop/partner.py, with the same
//! command line and command names as the js-libp2p partner (tests/interop/js/peer.mjs), so the
//! tests read alike. stdout carries ONLY protocol JSON; log lines go to stderr.
//!
//! Usage:
//!   peer [--listen MADDR]... [--no-listen] [--psk-file PATH] [--kad] [--seed HEX64]
//!        [--ping-interval-ms N]
//!   MADDR is /ip4/127.0.0.1/tcp/N (TCP only). Default: --listen /ip4/127.0.0.1/tcp/0.
//!   --ping-interval-ms: rust-libp2p pings every connection by itself, on ONE stream that it keeps
//!   open, every N ms (default 1000; the crate's own default is 15 s). The `ping` command collects
//!   the next `count` of those pings; it cannot send one on demand.
//!
//! It serves libp2p's perf protocol (/perf/1.0.0, specs/perf/perf.md: the client sends the byte
//! count it wants back as a big-endian u64, uploads until it closes its side, then reads the reply
//! to the end) with libp2p-stream, since rust-libp2p's own libp2p-perf is built for an older
//! release; `perf` is the client, with the go partner's reply fields.
//!
//! Out (events):  {"event":"ready","peer_id":...,"addrs":[".../p2p/<id>"],"kad":bool,"pnet":bool}
//!                {"event":"connect","peer_id":...}  {"event":"disconnect","peer_id":...}
//!                {"event":"identify","peer_id":...,"protocols":[...],"listen_addrs":[...]}
//!                {"event":"kad_add","peer_id":...}  {"event":"kad_remove","peer_id":...}
//!                {"event":"kad_request","type":"find_node"|"get_providers"|"add_provider"|
//!                 "get_value"|"put_value", "from": peer (put_value only)}
//!                {"event":"incoming_error","error":...}  (an inbound connection failed)
//!                {"event":"fatal","error":...}  (start-up failed; the process exits 1)
//! In (commands): {"id":N,"cmd":"...",...} -> {"id":N,"ok":true,...} | {"id":N,"ok":false,"error":...}
//!   dial, ping, bench_ping, bench_connect, identify, peers, hangup, find_peer, closest_peers,
//!   routing_table, bootstrap, provide, find_providers, put_value, get_value, local_records,
//!   local_providers (the kad ones need --kad), verify_peer_record, make_peer_record,
//!   perf {peer, upload, download} -> {uploaded, downloaded, upload_us, download_us}, stop.
//! Every command accepts "timeout_ms" (default 10000). Commands run concurrently; a failing
//! command never kills the process. It exits 0 on "stop" or when stdin closes.
//!
//! Signed peer records: rust-libp2p's identify (libp2p-identify 0.48) signs and accepts only its
//! own legacy format (domain "libp2p-routing-state", payload type "/libp2p/routing-state-record"),
//! not the libp2p spec's ("libp2p-peer-record", 0x0301) that go, js and physarum use; a spec record
//! it receives is dropped and the plain listenAddrs are used. `verify_peer_record` and
//! `make_peer_record` run libp2p-core's spec-format ("interop") code on bytes the test passes in.
//!
//! Network safety: the TCP transport refuses to dial anything but /ip4/127.0.0.1 (whatever a peer
//! or the DHT says); there is no DNS, mDNS, relay or bootstrap list.

use std::{
    collections::{HashMap, HashSet},
    error::Error,
    io::Write,
    num::NonZeroUsize,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    core::{
        muxing::StreamMuxerBox,
        transport::{Boxed, DialOpts as TransportDialOpts, ListenerId, TransportError, TransportEvent},
        upgrade::Version,
        PeerRecord, SignedEnvelope, Transport,
    },
    identify, identity, kad,
    multiaddr::Protocol,
    noise, ping,
    pnet::{PnetConfig, PreSharedKey},
    swarm::{
        behaviour::toggle::Toggle,
        dial_opts::{DialOpts, PeerCondition},
        ConnectionId, NetworkBehaviour, SwarmEvent,
    },
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder,
};
use serde_json::{json, Map, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::mpsc,
};

const KAD_PROTOCOL: &str = "/ipfs/kad/1.0.0";
const PERF_PROTOCOL: StreamProtocol = StreamProtocol::new("/perf/1.0.0");
/// Bytes per write or read of a perf stream (the go partner and physarum use the same).
const PERF_BLOCK: usize = 64 * 1024;
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Connections stay open while idle (js keeps them too); the tests hang up explicitly.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often expired commands are looked for (their replies may be this late).
const SWEEP_INTERVAL: Duration = Duration::from_millis(20);

// ------------------------------------------------------------------ output ----

fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout means the test runner went away: nothing left to tell anyone.
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn log(text: &str) {
    eprintln!("[rust-peer {}] {text}", std::process::id());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err(format!("odd-length hex {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| format!("bad hex {text:?}: {e}")))
        .collect()
}

// --------------------------------------------------------------- arguments ----

struct Options {
    listen: Vec<Multiaddr>,
    psk: Option<PreSharedKey>,
    kad: bool,
    seed: Option<Vec<u8>>,
    ping_interval: Duration,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut listen = Vec::new();
    let mut no_listen = false;
    let mut psk = None;
    let mut kad = false;
    let mut seed = None;
    let mut ping_interval = Duration::from_millis(1000);
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        let mut value = || {
            i += 1;
            args.get(i).cloned().ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg {
            "--listen" => {
                let ma: Multiaddr = value()?.parse().map_err(|e| format!("--listen: {e}"))?;
                if !is_local(&ma) {
                    return Err(format!("--listen {ma}: only /ip4/127.0.0.1 is allowed"));
                }
                listen.push(ma);
            }
            "--no-listen" => no_listen = true,
            "--psk-file" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path).map_err(|e| format!("--psk-file {path}: {e}"))?;
                // Parsed by rust-libp2p itself, so this also checks that it accepts the file.
                psk = Some(text.parse::<PreSharedKey>().map_err(|e| format!("--psk-file {path}: {e}"))?);
            }
            "--kad" => kad = true,
            "--seed" => {
                let bytes = unhex(&value()?)?;
                if bytes.len() != 32 {
                    return Err("--seed must be 64 hex digits (32 bytes)".into());
                }
                seed = Some(bytes);
            }
            "--ping-interval-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--ping-interval-ms: {e}"))?;
                ping_interval = Duration::from_millis(ms.max(1));
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
        i += 1;
    }
    if no_listen {
        listen.clear();
    } else if listen.is_empty() {
        listen.push("/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr"));
    }
    Ok(Options { listen, psk, kad, seed, ping_interval })
}

// -------------------------------------------------------- address checking ----

/// True when `ma` is /ip4/127.0.0.1/... (the only address we may contact).
fn is_local(ma: &Multiaddr) -> bool {
    matches!(ma.iter().next(), Some(Protocol::Ip4(ip)) if ip == std::net::Ipv4Addr::LOCALHOST)
}

/// `ma` without a trailing /p2p/<id>, and that id.
fn split_peer(ma: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut bare = ma.clone();
    match bare.pop() {
        Some(Protocol::P2p(peer)) => (bare, Some(peer)),
        _ => (ma.clone(), None),
    }
}

/// A TCP transport that dials only 127.0.0.1, whatever a peer or the DHT handed us.
struct LoopbackOnly<T>(T);

impl<T: Transport + Unpin> Transport for LoopbackOnly<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: TransportDialOpts) -> Result<Self::Dial, TransportError<Self::Error>> {
        if !is_local(&addr) {
            log(&format!("refusing to dial {addr}: only /ip4/127.0.0.1 may be contacted"));
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        self.0.dial(addr, opts)
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.get_mut().0).poll(cx)
    }
}

// -------------------------------------------------------------------- node ----

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    stream: libp2p_stream::Behaviour,
}

/// TCP (127.0.0.1 only) -> pnet (with a key) -> multistream -> Noise -> yamux, as rust-libp2p's
/// private-network setups build it (SwarmBuilder has no pnet step).
fn build_transport(
    key: &identity::Keypair,
    psk: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn Error + Send + Sync>> {
    let tcp = LoopbackOnly(tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)));
    let noise = noise::Config::new(key)?;
    let yamux = yamux::Config::default();
    // V1Lazy: rust-libp2p's default (SwarmBuilder::with_tcp), the dialer sends its protocol
    // choice before the listener confirms multistream.
    Ok(match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .boxed(),
        None => tcp.upgrade(Version::V1Lazy).authenticate(noise).multiplex(yamux).boxed(),
    })
}

fn build_swarm(opts: &Options) -> Result<Swarm<Behaviour>, Box<dyn Error + Send + Sync>> {
    let keypair = match &opts.seed {
        Some(seed) => identity::Keypair::ed25519_from_bytes(seed.clone())?,
        None => identity::Keypair::generate_ed25519(),
    };
    let psk = opts.psk;
    let kad_enabled = opts.kad;
    let ping_interval = opts.ping_interval;
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(move |key| build_transport(key, psk))?
        .with_behaviour(move |key| {
            let kad = kad_enabled.then(|| {
                let mut config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
                config.set_query_timeout(Duration::from_secs(30));
                let store = kad::store::MemoryStore::new(key.public().to_peer_id());
                let mut kad = kad::Behaviour::with_config(key.public().to_peer_id(), store, config);
                // Server mode from the start: rust would stay a client until it had a confirmed
                // external address, and loopback addresses are never confirmed.
                kad.set_mode(Some(kad::Mode::Server));
                kad
            });
            Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new_with_signed_peer_record("ipfs/0.1.0".into(), key)
                        .with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_interval)),
                kad: Toggle::from(kad),
                stream: libp2p_stream::Behaviour::new(),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    Ok(swarm)
}

// ---------------------------------------------------------------- commands ----

type Reply = Map<String, Value>;

fn fields(value: Value) -> Reply {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// One command still waiting for the network.
struct Pending {
    id: Value,
    cmd: String,
    deadline: Instant,
    /// The dial this command started, if any: its failure fails the command.
    dial: Option<ConnectionId>,
}

enum Waiting {
    Dial,
    Ping { peer: PeerId, want: usize, rtts: Vec<Duration> },
    Identify { peer: PeerId },
    BenchConnect { peer: PeerId, addr: Multiaddr, left: usize, times_us: Vec<f64>, started: Instant },
    Perf { peer: PeerId, upload: u64, download: u64 },
}

enum Query {
    FindPeer { target: PeerId },
    ClosestPeers,
    Bootstrap,
    Provide,
    FindProviders { providers: HashSet<PeerId> },
    PutValue,
    GetValue { records: Vec<Value> },
}

struct App {
    swarm: Swarm<Behaviour>,
    infos: HashMap<PeerId, identify::Info>,
    /// Commands waiting on connections, pings or identify, by a local serial number.
    waiting: HashMap<u64, (Pending, Waiting)>,
    queries: HashMap<kad::QueryId, (Pending, Query)>,
    next_serial: u64,
    /// Opens perf streams (libp2p-stream); cloned into each perf task.
    streams: libp2p_stream::Control,
}

fn pending(cmd: &str, id: &Value, args: &Reply) -> Pending {
    let ms = args.get("timeout_ms").and_then(Value::as_u64).unwrap_or(DEFAULT_TIMEOUT_MS);
    Pending { id: id.clone(), cmd: cmd.to_string(), deadline: Instant::now() + Duration::from_millis(ms), dial: None }
}

fn reply_ok(id: &Value, result: Reply) {
    let mut obj = result;
    obj.insert("id".into(), id.clone());
    obj.insert("ok".into(), Value::Bool(true));
    emit(Value::Object(obj));
}

fn reply_err(id: &Value, cmd: &str, error: &str) {
    log(&format!("command {cmd} (id {id}) failed: {error}"));
    emit(json!({"id": id, "ok": false, "error": error}));
}

fn str_arg<'a>(args: &'a Reply, name: &str) -> Result<&'a str, String> {
    args.get(name).and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| format!("missing {name}"))
}

fn local_addr(text: &str) -> Result<Multiaddr, String> {
    let ma: Multiaddr = text.parse().map_err(|e| format!("bad multiaddr {text:?}: {e}"))?;
    if !is_local(&ma) {
        return Err(format!("refusing to dial {text}: only /ip4/127.0.0.1 may be contacted"));
    }
    Ok(ma)
}

/// A peer id, or the /p2p/ id at the end of a multiaddr.
fn peer_of(text: &str) -> Result<PeerId, String> {
    if text.starts_with('/') {
        let ma: Multiaddr = text.parse().map_err(|e| format!("bad multiaddr {text:?}: {e}"))?;
        split_peer(&ma).1.ok_or_else(|| format!("{text} has no /p2p/ component"))
    } else {
        text.parse().map_err(|e| format!("bad peer id {text:?}: {e}"))
    }
}

fn key_arg(args: &Reply) -> Result<Vec<u8>, String> {
    if let Some(peer) = args.get("key_peer").and_then(Value::as_str) {
        return Ok(peer_of(peer)?.to_bytes());
    }
    if let Some(text) = args.get("key_hex").and_then(Value::as_str) {
        return unhex(text);
    }
    if let Some(text) = args.get("key").and_then(Value::as_str) {
        return Ok(text.as_bytes().to_vec());
    }
    Err("missing key (key_hex, key or key_peer)".into())
}

fn info_json(peer: &PeerId, info: &identify::Info) -> Reply {
    let mut protocols: Vec<String> = info.protocols.iter().map(|p| p.to_string()).collect();
    protocols.sort();
    let record = info.signed_peer_record.as_ref().and_then(|env| {
        PeerRecord::from_signed_envelope(env.clone()).ok().map(|r| {
            json!({"addrs": r.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                   "seq": r.seq(), "format": "legacy"})
        })
    });
    fields(json!({
        "peer_id": peer.to_string(),
        "protocols": protocols,
        "listen_addrs": info.listen_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "observed_addr": info.observed_addr.to_string(),
        "agent_version": info.agent_version,
        "protocol_version": info.protocol_version,
        "public_key_hex": hex(&info.public_key.encode_protobuf()),
        "signed_peer_record": record,
    }))
}

fn peer_infos(peers: &[kad::PeerInfo]) -> Value {
    json!(peers
        .iter()
        .map(|p| json!({"peer_id": p.peer_id.to_string(),
                         "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()}))
        .collect::<Vec<_>>())
}

impl App {
    fn kad(&mut self) -> Result<&mut kad::Behaviour<kad::store::MemoryStore>, String> {
        self.swarm.behaviour_mut().kad.as_mut().ok_or_else(|| "kad is not enabled (start with --kad)".to_string())
    }

    fn wait(&mut self, p: Pending, w: Waiting) {
        self.next_serial += 1;
        self.waiting.insert(self.next_serial, (p, w));
    }

    /// The peer `target` names, dialing it when not connected (the dial's id is returned).
    fn ensure_connected(&mut self, target: &str) -> Result<(PeerId, Option<ConnectionId>), String> {
        let peer = peer_of(target)?;
        if self.swarm.is_connected(&peer) {
            return Ok((peer, None));
        }
        let opts = if target.starts_with('/') {
            let (bare, _) = split_peer(&local_addr(target)?);
            DialOpts::peer_id(peer).addresses(vec![bare]).build()
        } else {
            DialOpts::peer_id(peer).build() // addresses from kad and identify's cache
        };
        let cid = opts.connection_id();
        self.swarm.dial(opts).map_err(|e| format!("dial {target}: {e}"))?;
        Ok((peer, Some(cid)))
    }

    fn handle_line(&mut self, line: &str) -> bool {
        let msg: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                emit(json!({"id": null, "ok": false, "error": format!("invalid JSON: {e}")}));
                return true;
            }
        };
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let Some(cmd) = msg.get("cmd").and_then(Value::as_str).map(str::to_owned) else {
            emit(json!({"id": id, "ok": false, "error": "a command is an object with a \"cmd\" string"}));
            return true;
        };
        if cmd == "stop" {
            emit(json!({"id": id, "ok": true}));
            return false;
        }
        let args = fields(msg);
        match self.command(&cmd, &id, &args) {
            Ok(Some(result)) => reply_ok(&id, result),
            Ok(None) => {} // answered later
            Err(e) => reply_err(&id, &cmd, &e),
        }
        true
    }

    /// Run one command: Some(reply) when done at once, None when it waits for the network.
    fn command(&mut self, cmd: &str, id: &Value, args: &Reply) -> Result<Option<Reply>, String> {
        let p = pending(cmd, id, args);
        match cmd {
            "dial" => {
                let ma = local_addr(str_arg(args, "addr")?)?;
                let (bare, peer) = split_peer(&ma);
                if let Some(peer) = peer.filter(|p| self.swarm.is_connected(p)) {
                    return Ok(Some(fields(json!({"peer_id": peer.to_string(), "existing": true}))));
                }
                let opts = match peer {
                    Some(peer) => DialOpts::peer_id(peer).addresses(vec![bare]).condition(PeerCondition::Always).build(),
                    None => DialOpts::unknown_peer_id().address(bare).build(),
                };
                let cid = opts.connection_id();
                self.swarm.dial(opts).map_err(|e| e.to_string())?;
                self.wait(Pending { dial: Some(cid), ..p }, Waiting::Dial);
                Ok(None)
            }
            "ping" | "bench_ping" => {
                let want = args.get("count").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
                let (peer, dial) = self.ensure_connected(str_arg(args, "peer")?)?;
                self.wait(Pending { dial, ..p }, Waiting::Ping { peer, want, rtts: Vec::new() });
                Ok(None)
            }
            "perf" => {
                let upload = args.get("upload").and_then(Value::as_u64).unwrap_or(0);
                let download = args.get("download").and_then(Value::as_u64).unwrap_or(0);
                let (peer, dial) = self.ensure_connected(str_arg(args, "peer")?)?;
                match dial {
                    None => self.spawn_perf(p, peer, upload, download),
                    // On the connection we asked for: libp2p-stream would dial again without an address.
                    Some(_) => self.wait(Pending { dial, ..p }, Waiting::Perf { peer, upload, download }),
                }
                Ok(None)
            }
            "bench_connect" => {
                let ma = local_addr(str_arg(args, "addr")?)?;
                let (bare, peer) = split_peer(&ma);
                let peer = peer.ok_or("bench_connect needs an address ending in /p2p/<id>")?;
                let left = args.get("count").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
                let dial = self.bench_dial(peer, &bare)?;
                let w = Waiting::BenchConnect { peer, addr: bare, left, times_us: Vec::new(), started: Instant::now() };
                self.wait(Pending { dial: Some(dial), ..p }, w);
                Ok(None)
            }
            "identify" => {
                let (peer, dial) = self.ensure_connected(str_arg(args, "peer")?)?;
                if let Some(info) = self.infos.get(&peer) {
                    return Ok(Some(info_json(&peer, info)));
                }
                self.wait(Pending { dial, ..p }, Waiting::Identify { peer });
                Ok(None)
            }
            "peers" => {
                let peers: Vec<String> = self.swarm.connected_peers().map(|p| p.to_string()).collect();
                Ok(Some(fields(json!({"peers": peers}))))
            }
            "hangup" => {
                let peer = peer_of(str_arg(args, "peer")?)?;
                let _ = self.swarm.disconnect_peer_id(peer); // not connected: nothing to do
                Ok(Some(Reply::new()))
            }
            "routing_table" => {
                let kad = self.kad()?;
                let peers: Vec<String> =
                    kad.kbuckets().flat_map(|b| b.iter().map(|e| e.node.key.preimage().to_string()).collect::<Vec<_>>()).collect();
                let mode = kad.mode().to_string();
                Ok(Some(fields(json!({"peers": peers, "mode": mode}))))
            }
            "find_peer" => {
                let target = peer_of(str_arg(args, "peer")?)?;
                let qid = self.kad()?.get_closest_peers(target);
                self.queries.insert(qid, (p, Query::FindPeer { target }));
                Ok(None)
            }
            "closest_peers" => {
                let key = key_arg(args)?;
                let qid = self.kad()?.get_closest_peers(key);
                self.queries.insert(qid, (p, Query::ClosestPeers));
                Ok(None)
            }
            "bootstrap" => {
                let addrs: Vec<String> = args
                    .get("addrs")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                for text in addrs {
                    let (bare, peer) = split_peer(&local_addr(&text)?);
                    let peer = peer.ok_or_else(|| format!("{text} has no /p2p/ component"))?;
                    self.kad()?.add_address(&peer, bare);
                }
                let qid = self.kad()?.bootstrap().map_err(|e| format!("bootstrap: {e}"))?;
                self.queries.insert(qid, (p, Query::Bootstrap));
                Ok(None)
            }
            "provide" => {
                let key = kad::RecordKey::new(&key_arg(args)?);
                let qid = self.kad()?.start_providing(key).map_err(|e| format!("provide: {e}"))?;
                self.queries.insert(qid, (p, Query::Provide));
                Ok(None)
            }
            "find_providers" => {
                let key = kad::RecordKey::new(&key_arg(args)?);
                let qid = self.kad()?.get_providers(key);
                self.queries.insert(qid, (p, Query::FindProviders { providers: HashSet::new() }));
                Ok(None)
            }
            "put_value" => {
                let key = kad::RecordKey::new(&key_arg(args)?);
                let value = unhex(str_arg(args, "value_hex")?)?;
                let quorum = match args.get("quorum").and_then(Value::as_u64) {
                    Some(n) => kad::Quorum::N(NonZeroUsize::new(n as usize).ok_or("quorum must be >= 1")?),
                    None => kad::Quorum::One,
                };
                let qid = self.kad()?.put_record(kad::Record::new(key, value), quorum).map_err(|e| format!("put_value: {e}"))?;
                self.queries.insert(qid, (p, Query::PutValue));
                Ok(None)
            }
            "get_value" => {
                let key = kad::RecordKey::new(&key_arg(args)?);
                let qid = self.kad()?.get_record(key);
                self.queries.insert(qid, (p, Query::GetValue { records: Vec::new() }));
                Ok(None)
            }
            "local_records" => {
                use kad::store::RecordStore;
                let records: Vec<Value> = self
                    .kad()?
                    .store_mut()
                    .records()
                    .map(|r| json!({"key_hex": hex(r.key.as_ref()), "value_hex": hex(&r.value),
                                    "publisher": r.publisher.map(|p| p.to_string())}))
                    .collect();
                Ok(Some(fields(json!({"records": records}))))
            }
            "local_providers" => {
                use kad::store::RecordStore;
                let key = kad::RecordKey::new(&key_arg(args)?);
                let providers: Vec<Value> = self
                    .kad()?
                    .store_mut()
                    .providers(&key)
                    .into_iter()
                    .map(|r| json!({"peer_id": r.provider.to_string(),
                                    "addrs": r.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>()}))
                    .collect();
                Ok(Some(fields(json!({"providers": providers}))))
            }
            "verify_peer_record" => {
                let bytes = unhex(str_arg(args, "envelope_hex")?)?;
                let env = SignedEnvelope::from_protobuf_encoding(&bytes).map_err(|e| format!("envelope: {e}"))?;
                let record = PeerRecord::from_signed_envelope_interop(env).map_err(|e| format!("peer record: {e}"))?;
                Ok(Some(fields(json!({
                    "peer_id": record.peer_id().to_string(),
                    "seq": record.seq(),
                    "addrs": record.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                }))))
            }
            "make_peer_record" => {
                // Needs our private key, which only the swarm's builder saw: a record for a fresh
                // key would prove nothing, so sign with a key derived from the given seed.
                let seed = unhex(str_arg(args, "seed_hex")?)?;
                let key = identity::Keypair::ed25519_from_bytes(seed).map_err(|e| e.to_string())?;
                let addrs = args
                    .get("addrs")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str()?.parse::<Multiaddr>().ok()).collect())
                    .unwrap_or_default();
                let record = PeerRecord::new_interop(&key, addrs).map_err(|e| e.to_string())?;
                Ok(Some(fields(json!({
                    "peer_id": key.public().to_peer_id().to_string(),
                    "seq": record.seq(),
                    "envelope_hex": hex(&record.into_signed_envelope().into_protobuf_encoding()),
                }))))
            }
            _ => Err(format!("unknown command {cmd}")),
        }
    }

    /// Run a perf exchange in a task of its own, which answers the command; the swarm goes on meanwhile.
    fn spawn_perf(&self, p: Pending, peer: PeerId, upload: u64, download: u64) {
        let control = self.streams.clone();
        let left = p.deadline.saturating_duration_since(Instant::now());
        tokio::spawn(async move {
            match tokio::time::timeout(left, perf_client(control, peer, upload, download)).await {
                Ok(Ok(reply)) => reply_ok(&p.id, reply),
                Ok(Err(e)) => reply_err(&p.id, &p.cmd, &format!("perf with {peer}: {e}")),
                Err(_) => reply_err(&p.id, &p.cmd, "timed out"),
            }
        });
    }

    fn bench_dial(&mut self, peer: PeerId, addr: &Multiaddr) -> Result<ConnectionId, String> {
        // Always: a fresh connection even when one is open already.
        let opts = DialOpts::peer_id(peer).addresses(vec![addr.clone()]).condition(PeerCondition::Always).build();
        let cid = opts.connection_id();
        self.swarm.dial(opts).map_err(|e| e.to_string())?;
        Ok(cid)
    }

    // ------------------------------------------------------------ events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, num_established, .. } => {
                if num_established.get() == 1 {
                    emit(json!({"event": "connect", "peer_id": peer_id.to_string()}));
                }
                self.on_connected(peer_id, connection_id, endpoint.get_remote_address());
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                if let Some(cause) = cause {
                    log(&format!("connection to {peer_id} closed: {cause}"));
                }
                if num_established == 0 {
                    self.infos.remove(&peer_id);
                    emit(json!({"event": "disconnect", "peer_id": peer_id.to_string()}));
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                let text = format!("dial failed: {error}");
                log(&text);
                let failed: Vec<u64> =
                    self.waiting.iter().filter(|(_, (p, _))| p.dial == Some(connection_id)).map(|(k, _)| *k).collect();
                for key in failed {
                    let (p, _) = self.waiting.remove(&key).expect("just found");
                    reply_err(&p.id, &p.cmd, &text);
                }
            }
            SwarmEvent::IncomingConnectionError { error, send_back_addr, .. } => {
                let text = format!("inbound connection from {send_back_addr} failed: {error}");
                log(&text);
                emit(json!({"event": "incoming_error", "error": text}));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => self.on_ping(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(ev)) => self.on_identify(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, cid: ConnectionId, remote: &Multiaddr) {
        let keys: Vec<u64> = self.waiting.iter().filter(|(_, (p, _))| p.dial == Some(cid)).map(|(k, _)| *k).collect();
        for key in keys {
            let (mut p, w) = self.waiting.remove(&key).expect("just found");
            match w {
                Waiting::Dial => {
                    reply_ok(&p.id, fields(json!({"peer_id": peer.to_string(), "remote_addr": remote.to_string()})))
                }
                Waiting::BenchConnect { peer, addr, left, mut times_us, started } => {
                    times_us.push(started.elapsed().as_secs_f64() * 1e6);
                    self.swarm.close_connection(cid);
                    if left <= 1 {
                        reply_ok(&p.id, fields(json!({"times_us": times_us})));
                        continue;
                    }
                    match self.bench_dial(peer, &addr) {
                        Ok(dial) => {
                            p.dial = Some(dial);
                            let w = Waiting::BenchConnect { peer, addr, left: left - 1, times_us, started: Instant::now() };
                            self.wait(p, w);
                        }
                        Err(e) => reply_err(&p.id, &p.cmd, &e),
                    }
                }
                Waiting::Perf { peer, upload, download } => self.spawn_perf(p, peer, upload, download),
                // Pings and identify go on over the new connection.
                other => {
                    p.dial = None;
                    self.wait(p, other);
                }
            }
        }
    }

    fn on_ping(&mut self, ev: ping::Event) {
        let keys: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, (_, w))| matches!(w, Waiting::Ping { peer, .. } if *peer == ev.peer))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let (p, w) = self.waiting.remove(&key).expect("just found");
            let Waiting::Ping { peer, want, mut rtts } = w else { unreachable!() };
            match &ev.result {
                Ok(rtt) => {
                    rtts.push(*rtt);
                    if rtts.len() >= want {
                        let ms: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1e3).collect();
                        let us: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1e6).collect();
                        reply_ok(&p.id, fields(json!({"rtts_ms": ms, "rtts_us": us})));
                    } else {
                        self.wait(p, Waiting::Ping { peer, want, rtts });
                    }
                }
                Err(e) => reply_err(&p.id, &p.cmd, &format!("ping {peer}: {e}")),
            }
        }
    }

    fn on_identify(&mut self, ev: identify::Event) {
        match ev {
            identify::Event::Received { peer_id, info, .. } => {
                let summary = info_json(&peer_id, &info);
                emit(json!({"event": "identify", "peer_id": peer_id.to_string(),
                            "protocols": summary["protocols"], "listen_addrs": summary["listen_addrs"]}));
                let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
                if let (true, Some(kad)) = (speaks_kad, self.swarm.behaviour_mut().kad.as_mut()) {
                    // rust-libp2p's kad only learns a listener's address from the dialer side;
                    // identify is how it learns where an inbound peer can be reached.
                    for addr in info.listen_addrs.iter().filter(|a| is_local(a)) {
                        kad.add_address(&peer_id, addr.clone());
                    }
                }
                self.infos.insert(peer_id, info);
                let keys: Vec<u64> = self
                    .waiting
                    .iter()
                    .filter(|(_, (_, w))| matches!(w, Waiting::Identify { peer } if *peer == peer_id))
                    .map(|(k, _)| *k)
                    .collect();
                for key in keys {
                    let (p, _) = self.waiting.remove(&key).expect("just found");
                    reply_ok(&p.id, info_json(&peer_id, &self.infos[&peer_id]));
                }
            }
            identify::Event::Error { peer_id, error, .. } => {
                log(&format!("identify with {peer_id} failed: {error}"));
            }
            _ => {}
        }
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::RoutingUpdated { peer, is_new_peer, old_peer, .. } => {
                if is_new_peer {
                    emit(json!({"event": "kad_add", "peer_id": peer.to_string()}));
                }
                if let Some(old) = old_peer {
                    emit(json!({"event": "kad_remove", "peer_id": old.to_string()}));
                }
            }
            kad::Event::InboundRequest { request } => {
                let event = match request {
                    kad::InboundRequest::FindNode { num_closer_peers } => {
                        json!({"type": "find_node", "num_closer_peers": num_closer_peers})
                    }
                    kad::InboundRequest::GetProvider { num_closer_peers, num_provider_peers } => json!({
                        "type": "get_providers", "num_closer_peers": num_closer_peers,
                        "num_provider_peers": num_provider_peers}),
                    kad::InboundRequest::AddProvider { .. } => json!({"type": "add_provider"}),
                    kad::InboundRequest::GetRecord { num_closer_peers, present_locally } => json!({
                        "type": "get_value", "num_closer_peers": num_closer_peers,
                        "present_locally": present_locally}),
                    kad::InboundRequest::PutRecord { source, .. } => {
                        json!({"type": "put_value", "from": source.to_string()})
                    }
                };
                let mut obj = fields(event);
                obj.insert("event".into(), "kad_request".into());
                emit(Value::Object(obj));
            }
            kad::Event::OutboundQueryProgressed { id, result, step, .. } => self.on_query(id, result, step),
            _ => {}
        }
    }

    fn on_query(&mut self, qid: kad::QueryId, result: kad::QueryResult, step: kad::ProgressStep) {
        let Some((p, mut q)) = self.queries.remove(&qid) else {
            return; // rust's own queries (automatic bootstrap, republishing)
        };
        let done: Result<Reply, String> = match (&mut q, result) {
            (Query::FindPeer { target }, kad::QueryResult::GetClosestPeers(r)) => {
                let peers = match r {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                match peers.iter().find(|p| p.peer_id == *target) {
                    Some(found) => Ok(fields(json!({
                        "peer_id": found.peer_id.to_string(),
                        "addrs": found.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                        "closest": peer_infos(&peers)}))),
                    None => Err(format!("peer {target} not found")),
                }
            }
            (Query::ClosestPeers, kad::QueryResult::GetClosestPeers(r)) => match r {
                Ok(ok) => Ok(fields(json!({
                    "peers": ok.peers.iter().map(|p| p.peer_id.to_string()).collect::<Vec<_>>(),
                    "peer_infos": peer_infos(&ok.peers)}))),
                Err(e) => Err(format!("closest_peers: {e}")),
            },
            (Query::Bootstrap, kad::QueryResult::Bootstrap(r)) => match r {
                Ok(ok) if ok.num_remaining == 0 || step.last => {
                    let peers: Vec<String> = self
                        .kad()
                        .map(|k| k.kbuckets().flat_map(|b| b.iter().map(|e| e.node.key.preimage().to_string()).collect::<Vec<_>>()).collect())
                        .unwrap_or_default();
                    Ok(fields(json!({"peers": peers})))
                }
                Ok(_) => {
                    self.queries.insert(qid, (p, q));
                    return;
                }
                Err(e) => Err(format!("bootstrap: {e}")),
            },
            (Query::Provide, kad::QueryResult::StartProviding(r)) => {
                r.map(|_| Reply::new()).map_err(|e| format!("provide: {e}"))
            }
            (Query::FindProviders { providers }, kad::QueryResult::GetProviders(r)) => match r {
                Ok(kad::GetProvidersOk::FoundProviders { providers: found, .. }) => {
                    providers.extend(found);
                    if !step.last {
                        self.queries.insert(qid, (p, q));
                        return;
                    }
                    Ok(providers_reply(providers))
                }
                Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => Ok(providers_reply(providers)),
                Err(e) if !providers.is_empty() => {
                    log(&format!("find_providers ended with {e}"));
                    Ok(providers_reply(providers))
                }
                Err(e) => Err(format!("find_providers: {e}")),
            },
            (Query::PutValue, kad::QueryResult::PutRecord(r)) => {
                r.map(|ok| fields(json!({"key_hex": hex(ok.key.as_ref())}))).map_err(|e| format!("put_value: {e}"))
            }
            (Query::GetValue { records }, kad::QueryResult::GetRecord(r)) => match r {
                Ok(kad::GetRecordOk::FoundRecord(found)) => {
                    records.push(json!({"peer": found.peer.map(|p| p.to_string()),
                                        "value_hex": hex(&found.record.value)}));
                    if !step.last {
                        self.queries.insert(qid, (p, q));
                        return;
                    }
                    Ok(fields(json!({"records": records})))
                }
                Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) => Ok(fields(json!({"records": records}))),
                Err(e) if !records.is_empty() => {
                    log(&format!("get_value ended with {e}"));
                    Ok(fields(json!({"records": records})))
                }
                Err(e) => Err(format!("get_value: {e}")),
            },
            (_, other) => Err(format!("unexpected query result {other:?}")),
        };
        match done {
            Ok(reply) => reply_ok(&p.id, reply),
            Err(e) => reply_err(&p.id, &p.cmd, &e),
        }
    }

    /// Fail the commands whose deadline passed.
    fn sweep(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self.waiting.iter().filter(|(_, (p, _))| p.deadline <= now).map(|(k, _)| *k).collect();
        for key in late {
            let (p, _) = self.waiting.remove(&key).expect("just found");
            reply_err(&p.id, &p.cmd, "timed out");
        }
        let late: Vec<kad::QueryId> = self.queries.iter().filter(|(_, (p, _))| p.deadline <= now).map(|(k, _)| *k).collect();
        for qid in late {
            let (p, _) = self.queries.remove(&qid).expect("just found");
            if let Some(mut query) = self.swarm.behaviour_mut().kad.as_mut().and_then(|k| k.query_mut(&qid)) {
                query.finish();
            }
            reply_err(&p.id, &p.cmd, "timed out");
        }
    }
}

async fn write_zeros(stream: &mut libp2p::Stream, mut n: u64) -> std::io::Result<()> {
    let block = [0u8; PERF_BLOCK];
    while n > 0 {
        let chunk = n.min(PERF_BLOCK as u64) as usize;
        stream.write_all(&block[..chunk]).await?;
        n -= chunk as u64;
    }
    Ok(())
}

/// The perf client: `upload` bytes up, then `download` bytes back, each direction timed.
async fn perf_client(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    upload: u64,
    download: u64,
) -> Result<Reply, String> {
    let mut stream = control.open_stream(peer, PERF_PROTOCOL).await.map_err(|e| e.to_string())?;
    let started = Instant::now();
    stream.write_all(&download.to_be_bytes()).await.map_err(|e| format!("sending the size: {e}"))?;
    write_zeros(&mut stream, upload).await.map_err(|e| format!("upload: {e}"))?;
    // Closes our side only (a yamux FIN): the reply still comes in.
    stream.close().await.map_err(|e| format!("closing the upload: {e}"))?;
    let uploaded = Instant::now();
    let mut buf = vec![0u8; PERF_BLOCK];
    let mut got: u64 = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => return Err(format!("download after {got} bytes: {e}")),
        }
    }
    if got != download {
        return Err(format!("asked for {download} bytes, got {got}"));
    }
    Ok(fields(json!({
        "uploaded": upload, "downloaded": got,
        "upload_us": (uploaded - started).as_micros() as u64, "download_us": uploaded.elapsed().as_micros() as u64,
    })))
}

/// One inbound perf stream: read the size asked for and the upload to its end, then send the reply.
async fn perf_serve(mut stream: libp2p::Stream) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    let mut buf = vec![0u8; PERF_BLOCK];
    // The spec forbids overlapping the directions: the whole upload is read before replying.
    while stream.read(&mut buf).await? != 0 {}
    write_zeros(&mut stream, u64::from_be_bytes(header)).await?;
    stream.close().await
}

async fn serve_perf(mut incoming: libp2p_stream::IncomingStreams) {
    while let Some((peer, stream)) = incoming.next().await {
        tokio::spawn(async move {
            if let Err(e) = perf_serve(stream).await {
                log(&format!("perf stream from {peer}: {e}"));
            }
        });
    }
}

fn providers_reply(providers: &HashSet<PeerId>) -> Reply {
    let mut list: Vec<String> = providers.iter().map(|p| p.to_string()).collect();
    list.sort();
    fields(json!({"providers": list}))
}

// -------------------------------------------------------------------- main ----

async fn start(opts: &Options) -> Result<Swarm<Behaviour>, Box<dyn Error + Send + Sync>> {
    let mut swarm = build_swarm(opts)?;
    for addr in &opts.listen {
        swarm.listen_on(addr.clone())?;
    }
    // The listeners report their addresses (port 0 resolved) before anything else can happen.
    let mut bound = 0;
    while bound < opts.listen.len() {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                // Known to identify (listen addrs and the signed record) and to kad's provider
                // records; loopback is never confirmed by anyone else.
                swarm.add_external_address(address);
                bound += 1;
            }
            SwarmEvent::ListenerError { error, .. } => return Err(Box::new(error)),
            SwarmEvent::ListenerClosed { reason: Err(error), .. } => return Err(Box::new(error)),
            _ => {}
        }
    }
    Ok(swarm)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            log(&format!("start-up failed: {e}"));
            emit(json!({"event": "fatal", "error": e}));
            std::process::exit(1);
        }
    };
    let swarm = match start(&opts).await {
        Ok(s) => s,
        Err(e) => {
            log(&format!("start-up failed: {e}"));
            emit(json!({"event": "fatal", "error": e.to_string()}));
            std::process::exit(1);
        }
    };
    // Served before anyone can know our address.
    let mut streams = swarm.behaviour().stream.new_control();
    match streams.accept(PERF_PROTOCOL) {
        Ok(incoming) => {
            tokio::spawn(serve_perf(incoming));
        }
        Err(e) => log(&format!("cannot serve {PERF_PROTOCOL}: {e}")),
    }
    let me = *swarm.local_peer_id();
    let addrs: Vec<String> = swarm.listeners().map(|a| format!("{a}/p2p/{me}")).collect();
    emit(json!({"event": "ready", "peer_id": me.to_string(), "addrs": addrs,
                "kad": opts.kad, "pnet": opts.psk.is_some()}));
    log(&format!("ready {me} {}", addrs.join(" ")));

    // Lines from stdin; None at end of input.
    let (tx, mut lines) = mpsc::unbounded_channel::<Option<String>>();
    tokio::spawn(async move {
        let mut reader = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(None);
    });

    let mut app =
        App { swarm, infos: HashMap::new(), waiting: HashMap::new(), queries: HashMap::new(), next_serial: 0, streams };
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            event = app.swarm.select_next_some() => app.on_swarm_event(event),
            line = lines.recv() => match line {
                Some(Some(line)) if line.trim().is_empty() => {}
                Some(Some(line)) => if !app.handle_line(&line) { break },
                _ => break,
            },
            _ = sweep.tick() => app.sweep(),
        }
    }
    std::process::exit(0);
}

#!/usr/bin/env node
// A js-libp2p peer process driven over stdin/stdout with JSON lines.
//
// physarum's interop tests (tests/interop/partner.py) start this process and
// talk to it: one JSON object per line in each direction. stdout carries ONLY
// protocol JSON; every log line goes to stderr.
//
// Usage:
//   node peer.mjs [--listen MADDR]... [--no-listen] [--psk-file PATH] [--kad]
//                 [--seed HEX64] [--inbound-threshold N] [--no-connection-monitor]
//                 [--identify-push]   (also run identify/push: send and accept /ipfs/id/push/1.0.0)
//   MADDR may be /ip4/127.0.0.1/tcp/N (TCP) or /ip4/127.0.0.1/tcp/N/ws (WebSocket); both are dialled.
//
// Out (events):   {"event":"ready","peer_id":"12D3Koo...","addrs":[".../p2p/12D3Koo..."]}
//                 {"event":"connect","peer_id":...}   {"event":"disconnect","peer_id":...}
//                 {"event":"identify","peer_id":...,"protocols":[...],"listen_addrs":[...]}
//                 {"event":"kad_add","peer_id":...}   {"event":"kad_remove","peer_id":...}
//                 {"event":"fatal","error":...}  (start-up failed; the process exits 1)
// In (commands):  {"id":N,"cmd":"...",...}  ->  {"id":N,"ok":true,...} | {"id":N,"ok":false,"error":"..."}
//   dial, ping, bench_ping, bench_connect, identify, peerstore, peers, hangup,
//   find_peer, closest_peers, routing_table (the last three need --kad), perf, stop.
//   perf: {"peer","upload","download"} -> {"uploaded","downloaded","upload_us","download_us"}
//   runs libp2p's perf protocol (/perf/1.0.0) as the client; every node also serves it.
// Every command accepts an optional "timeout_ms" (default 10000, js's own
// default dial/ping timeout). Commands run concurrently; a failing command
// never kills the process. The process exits 0 on "stop" or when stdin closes.
//
// Network safety: a connection gater refuses to dial anything but
// /ip4/127.0.0.1, dnsaddr resolution is disabled, and there is no bootstrap
// list, mDNS, UPnP, relay or autonat. Only 127.0.0.1 is ever contacted.

import './polyfill.mjs' // must stay first: Promise.withResolvers for Node 20

import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { generateKeyPair, generateKeyPairFromSeed, publicKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify, identifyPush } from '@libp2p/identify'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { peerIdFromString } from '@libp2p/peer-id'
import { ping } from '@libp2p/ping'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const KAD_PROTOCOL = '/ipfs/kad/1.0.0'
const DEFAULT_TIMEOUT_MS = 10_000

// libp2p's perf protocol (specs/perf/perf.md). @libp2p/perf, js-libp2p's own implementation, is not
// served by the npm registry this project installs from (E404 for every version), so the partner
// speaks the protocol itself on js-libp2p's stream API, as the go partner does on go-libp2p's: the
// stack under it (pnet, Noise, yamux, multistream-select) is js-libp2p's.
const PERF_PROTOCOL = '/perf/1.0.0'
// Bytes per send(): large enough that per-call costs vanish; js's yamux splits them into frames
// that fit the send window by itself.
const PERF_BLOCK = 64 * 1024
const PERF_ZEROS = new Uint8Array(PERF_BLOCK)
// Concurrent perf streams per connection, each way (js's default for a handler is 32 in, 64 out).
const PERF_MAX_STREAMS = 8
// The most one served exchange may take, start to end: minutes, for the benchmark's 128 MiB each
// way on a loaded 2-core machine; a stalled client is cut off sooner by js's stream inactivity
// timeout (120 s without a byte).
const PERF_SERVE_TIMEOUT_MS = 600_000

// ---------------------------------------------------------------- output ----

// Anything a dependency prints with console.* goes to stderr, never stdout.
for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args)
}

function log (...args) {
  process.stderr.write(`[js-peer ${process.pid}] ${args.join(' ')}\n`)
}

function emit (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function errorText (err) {
  if (err == null) return 'unknown error'
  const name = err.name && err.name !== 'Error' ? `${err.name}: ` : ''
  let text = `${name}${err.message ?? String(err)}`
  if (Array.isArray(err.errors) && err.errors.length > 0) {
    text += ' [' + err.errors.map(e => errorText(e)).join('; ') + ']'
  }
  return text
}

process.on('unhandledRejection', (err) => log('unhandled rejection:', errorText(err)))
process.on('uncaughtException', (err) => log('uncaught exception:', errorText(err), err?.stack ?? ''))

// ------------------------------------------------------------- arguments ----

function parseArgs (argv) {
  const opts = {
    listen: [],
    noListen: false,
    pskFile: null,
    kad: false,
    seed: null,
    inboundThreshold: null,
    connectionMonitor: true
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`)
      return argv[++i]
    }
    switch (arg) {
      case '--listen': opts.listen.push(value()); break
      case '--no-listen': opts.noListen = true; break
      case '--psk-file': opts.pskFile = value(); break
      case '--kad': opts.kad = true; break
      case '--seed': opts.seed = value(); break
      case '--inbound-threshold': opts.inboundThreshold = Number(value()); break
      case '--no-connection-monitor': opts.connectionMonitor = false; break
      case '--identify-push': opts.identifyPush = true; break
      default: throw new Error(`unknown argument ${arg}`)
    }
  }
  if (opts.noListen) {
    opts.listen = []
  } else if (opts.listen.length === 0) {
    opts.listen = ['/ip4/127.0.0.1/tcp/0']
  }
  return opts
}

// ------------------------------------------------------ address checking ----

/** True when `ma` is /ip4/127.0.0.1/... (the only address we may contact). */
function isLocal (ma) {
  const first = ma.getComponents()[0]
  return first != null && first.name === 'ip4' && first.value === '127.0.0.1'
}

function localMultiaddr (text) {
  const ma = multiaddr(text)
  if (!isLocal(ma)) throw new Error(`refusing to dial ${text}: only /ip4/127.0.0.1 may be contacted`)
  return ma
}

/** A peer id string, or a full /ip4/127.0.0.1/.../p2p/<id> multiaddr. */
function dialTarget (text) {
  if (typeof text !== 'string' || text.length === 0) throw new Error('missing peer')
  return text.startsWith('/') ? localMultiaddr(text) : peerIdFromString(text)
}

function peerIdOf (text) {
  if (typeof text !== 'string' || text.length === 0) throw new Error('missing peer')
  if (text.startsWith('/')) {
    const id = multiaddr(text).getComponents().findLast(c => c.name === 'p2p')?.value
    if (id == null) throw new Error(`${text} has no /p2p/ component`)
    return peerIdFromString(id)
  }
  return peerIdFromString(text)
}

/** A byte count from a command: a non-negative integer that fits a double exactly. */
function byteCount (args, name) {
  const value = Number(args[name] ?? 0)
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name} must be a byte count, got ${args[name]}`)
  return value
}

const bytesToB64 = (bytes) => bytes == null ? null : Buffer.from(bytes).toString('base64')
const signalFor = (args) => AbortSignal.timeout(Number(args.timeout_ms ?? DEFAULT_TIMEOUT_MS))

// ------------------------------------------------------------------ node ----

async function makeNode (opts) {
  let privateKey
  if (opts.seed != null) {
    const seed = Buffer.from(opts.seed, 'hex')
    if (seed.length !== 32) throw new Error('--seed must be 64 hex digits (32 bytes)')
    privateKey = await generateKeyPairFromSeed('Ed25519', new Uint8Array(seed))
  } else {
    privateKey = await generateKeyPair('Ed25519')
  }

  const services = {
    identify: identify(),
    // js allows one outbound /ipfs/ping/1.0.0 stream per connection by default,
    // counted until the stream is fully closed on both sides; kad-dht and the
    // connection monitor ping on their own, and a closing stream can linger on a
    // loaded machine, so a ping command could fail with
    // TooManyOutboundProtocolStreamsError. The limit is local policy, not wire
    // behaviour, so the partner lifts it.
    ping: ping({ maxOutboundStreams: 16 })
  }
  if (opts.identifyPush) {
    services.identifyPush = identifyPush()
  }
  if (opts.kad) {
    services.dht = kadDHT({
      protocol: KAD_PROTOCOL,
      // server mode from the start: answer /ipfs/kad/1.0.0 even though we only
      // have loopback addresses (js would otherwise stay a client).
      clientMode: false,
      // js's default mapper (removePrivateAddressesMapper) drops loopback and
      // private addresses, so peers on 127.0.0.1 would never be added.
      peerInfoMapper: passthroughMapper,
      // do not block queries until the first self-query found someone
      allowQueryWithZeroPeers: true
    })
  }

  const init = {
    privateKey,
    addresses: { listen: opts.listen },
    // /tcp and /tcp/N/ws (plain WebSocket; /wss would need a certificate)
    transports: [tcp(), webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services,
    peerDiscovery: [],
    connectionGater: {
      // never dial anything but 127.0.0.1, whatever a peer or the DHT told us
      denyDialMultiaddr: async (ma) => !isLocal(ma)
    },
    connectionManager: {
      // no /dnsaddr resolution (it would query DNS)
      resolvers: {},
      ...(opts.inboundThreshold != null ? { inboundConnectionThreshold: opts.inboundThreshold } : {})
    },
    connectionMonitor: { enabled: opts.connectionMonitor }
  }
  if (opts.pskFile != null) {
    // Passed to js verbatim, so this also checks that js accepts the file.
    init.connectionProtector = preSharedKey({ psk: readFileSync(opts.pskFile) })
  }
  return createLibp2p(init)
}

// ------------------------------------------------------------------ perf ----

/** Send `n` zero bytes on `stream`, waiting for js's drain whenever its send buffer is full. */
async function sendZeros (stream, n, signal) {
  while (n > 0) {
    const chunk = Math.min(n, PERF_BLOCK)
    n -= chunk
    // the same zero block is queued many times over: js keeps a reference, and it never changes
    if (!stream.send(PERF_ZEROS.subarray(0, chunk))) await stream.onDrain({ signal })
  }
}

/**
 * Read `stream` until the remote closes its writable end, handing each chunk to `onChunk` (which
 * may throw to fail the read). Rejects when the stream is reset or aborted, or `signal` fires.
 *
 * Built on the events rather than the stream's async iterator because the listener must be in
 * place from the start: data that arrives while nobody listens is buffered only up to
 * maxReadBufferLength (4 MiB) and then the stream is aborted, and js's yamux grants the sender
 * more window as data arrives, not as it is read. The end is checked a microtask after
 * remoteCloseWrite because yamux reports a frame's FIN before it hands over the frame's data, and
 * data buffered before the listener was added is handed over in a microtask too.
 */
function readToEnd (stream, onChunk, signal) {
  return new Promise((resolve, reject) => {
    let done = false
    const finish = (err) => {
      if (done) return
      done = true
      stream.removeEventListener('message', onMessage)
      stream.removeEventListener('remoteCloseWrite', onRemoteCloseWrite)
      stream.removeEventListener('close', onClose)
      signal.removeEventListener('abort', onAbort)
      if (err == null) resolve()
      else reject(err)
    }
    const checkEnd = () => {
      if (done || stream.remoteWriteStatus !== 'closed') return
      if (stream.readBufferLength > 0) setTimeout(checkEnd, 0) // still being handed over
      else finish()
    }
    const onMessage = (evt) => {
      try {
        onChunk(evt.data)
      } catch (err) {
        finish(err)
      }
    }
    const onRemoteCloseWrite = () => queueMicrotask(checkEnd)
    const onClose = (evt) => {
      if (evt.error != null) finish(evt.error)
      else queueMicrotask(checkEnd)
    }
    const onAbort = () => finish(signal.reason ?? new Error('aborted'))
    if (signal.aborted) {
      onAbort()
      return
    }
    signal.addEventListener('abort', onAbort)
    stream.addEventListener('message', onMessage)
    stream.addEventListener('remoteCloseWrite', onRemoteCloseWrite)
    stream.addEventListener('close', onClose)
    // the remote may have closed before we listened (a small upload, or none)
    queueMicrotask(checkEnd)
  })
}

/**
 * The perf server: read the 8-byte big-endian count of bytes to send back, read the upload to its
 * end (the spec forbids overlapping the two directions), send that many bytes and close. Any
 * failure aborts the stream (js-libp2p resets it when a handler throws).
 */
async function servePerf (stream) {
  const signal = AbortSignal.timeout(PERF_SERVE_TIMEOUT_MS)
  let header = new Uint8Array(0)
  let uploaded = 0
  await readToEnd(stream, (buf) => {
    let take = 0
    if (header.length < 8) {
      // the header may come split over chunks; copy only its bytes, count the rest
      take = Math.min(8 - header.length, buf.byteLength)
      header = Uint8Array.of(...header, ...buf.subarray(0, take))
    }
    uploaded += buf.byteLength - take
  }, signal)
  if (header.length < 8) throw new Error(`perf: the stream ended after ${header.length} of the 8 header bytes`)
  const wanted = new DataView(header.buffer).getBigUint64(0, false)
  if (wanted > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`perf: ${wanted} bytes asked for is too many`)
  log(`perf: received ${uploaded} bytes, sending ${wanted}`)
  await sendZeros(stream, Number(wanted), signal)
  await stream.close({ signal })
}

// -------------------------------------------------------------- commands ----

function makeCommands (node, opts) {
  const dht = () => {
    if (!opts.kad || node.services.dht == null) throw new Error('kad is not enabled (start with --kad)')
    return node.services.dht
  }

  async function connectionTo (peerText, signal) {
    const peerId = peerIdOf(peerText)
    const existing = node.getConnections(peerId).find(c => c.status === 'open')
    if (existing != null) return existing
    return node.dial(dialTarget(peerText), { signal })
  }

  async function peerStoreData (peerId) {
    const peer = await node.peerStore.get(peerId)
    const metadata = {}
    for (const [key, value] of peer.metadata ?? []) {
      metadata[key] = Buffer.from(value).toString('utf8')
    }
    return {
      protocols: [...peer.protocols].sort(),
      addrs: peer.addresses.map(a => a.multiaddr.toString()),
      certified_addrs: peer.addresses.filter(a => a.isCertified).map(a => a.multiaddr.toString()),
      // protobuf PublicKey{Type, Data}, as carried in identify's publicKey field
      public_key_b64: peer.id.publicKey != null ? bytesToB64(publicKeyToProtobuf(peer.id.publicKey)) : null,
      metadata,
      tags: [...(peer.tags ?? new Map()).keys()]
    }
  }

  // Returns [ms reported by js, us measured around the whole call].
  async function pingOnce (target, args) {
    // Timed around the whole ping() call: it opens a NEW yamux stream,
    // negotiates /ipfs/ping/1.0.0 with multistream-select, sends 32 bytes,
    // closes its write side and waits for the echo. So the microsecond
    // figure includes js's new-stream + negotiation cost, not just the echo
    // round trip; js's own figure is whole ms, from after negotiation.
    const t0 = process.hrtime.bigint()
    const ms = await node.services.ping.ping(target, { signal: signalFor(args) })
    const t1 = process.hrtime.bigint()
    return [ms, Number(t1 - t0) / 1000]
  }

  return {
    async dial (args) {
      const conn = await node.dial(localMultiaddr(args.addr), { signal: signalFor(args) })
      return {
        peer_id: conn.remotePeer.toString(),
        remote_addr: conn.remoteAddr.toString(),
        multiplexer: conn.multiplexer ?? null,
        encryption: conn.encryption ?? null
      }
    },

    async ping (args) {
      const target = dialTarget(args.peer)
      const rtts = []
      for (let i = 0; i < Number(args.count ?? 1); i++) {
        rtts.push((await pingOnce(target, args))[0])
      }
      return { rtts_ms: rtts }
    },

    async bench_ping (args) {
      const target = dialTarget(args.peer)
      const rtts = []
      for (let i = 0; i < Number(args.count ?? 1); i++) {
        rtts.push((await pingOnce(target, args))[1])
      }
      return { rtts_us: rtts }
    },

    async bench_connect (args) {
      const ma = localMultiaddr(args.addr)
      const times = []
      for (let i = 0; i < Number(args.count ?? 1); i++) {
        const signal = signalFor(args)
        const t0 = process.hrtime.bigint()
        // force: a fresh connection even if one is open already
        const conn = await node.dial(ma, { signal, force: true })
        const t1 = process.hrtime.bigint()
        times.push(Number(t1 - t0) / 1000)
        await node.hangUp(conn.remotePeer, { signal: signalFor(args) })
      }
      return { times_us: times }
    },

    async identify (args) {
      const signal = signalFor(args)
      const peerId = peerIdOf(args.peer)
      const conn = await connectionTo(args.peer, signal)
      let result = null
      let identifyError = null
      // js runs identify by itself on every new connection and its handler
      // takes only ONE inbound identify stream at a time (maxInboundStreams 1),
      // so an explicit identify right after a dial can be reset by the remote
      // (UnexpectedEOFError). Retry a few times before giving up.
      for (let attempt = 0; attempt < 5 && result == null && !signal.aborted; attempt++) {
        try {
          result = await node.services.identify.identify(conn, { signal })
          identifyError = null
        } catch (err) {
          identifyError = errorText(err)
          log(`identify attempt ${attempt + 1} failed:`, identifyError)
          await new Promise(resolve => setTimeout(resolve, 100))
        }
      }
      let stored = null
      try { stored = await peerStoreData(peerId) } catch { /* not in the peer store */ }
      if (result == null && stored == null) throw new Error(`identify failed: ${identifyError}`)
      const spr = result?.signedPeerRecord
      return {
        source: result != null ? 'identify' : 'peerstore',
        identify_error: identifyError,
        peer_id: (result?.peerId ?? peerId).toString(),
        protocols: result != null ? [...result.protocols].sort() : stored.protocols,
        listen_addrs: result != null ? result.listenAddrs.map(a => a.toString()) : stored.addrs,
        observed_addr: result?.observedAddr?.toString() ?? null,
        agent_version: result?.agentVersion ?? stored?.metadata?.AgentVersion ?? null,
        protocol_version: result?.protocolVersion ?? stored?.metadata?.ProtocolVersion ?? null,
        public_key_b64: result?.publicKey != null ? bytesToB64(result.publicKey) : (stored?.public_key_b64 ?? null),
        signed_peer_record: spr == null
          ? null
          : { addrs: spr.addresses.map(a => a.toString()), seq: spr.seq?.toString() ?? null }
      }
    },

    async peerstore (args) {
      const peerId = peerIdOf(args.peer)
      if (!(await node.peerStore.has(peerId))) throw new Error(`peer ${peerId} is not in the peer store`)
      return { peer_id: peerId.toString(), ...(await peerStoreData(peerId)) }
    },

    async peers () {
      return { peers: node.getPeers().map(p => p.toString()) }
    },

    async hangup (args) {
      await node.hangUp(dialTarget(args.peer), { signal: signalFor(args) })
      return {}
    },

    async find_peer (args) {
      const peerId = peerIdOf(args.peer)
      const signal = signalFor(args)
      // useCache false by default: ask the network (FIND_NODE), not the local peer store
      for await (const event of dht().findPeer(peerId, { signal, useCache: args.use_cache === true })) {
        if (event.name === 'FINAL_PEER') {
          return {
            peer_id: event.peer.id.toString(),
            addrs: event.peer.multiaddrs.map(a => a.toString()),
            from: event.from.toString()
          }
        }
      }
      throw new Error(`peer ${peerId} not found`)
    },

    async closest_peers (args) {
      const key = args.key_hex != null
        ? new Uint8Array(Buffer.from(args.key_hex, 'hex'))
        : peerIdOf(args.key_peer).toMultihash().bytes
      const peers = []
      const seen = new Set()
      for await (const event of dht().getClosestPeers(key, { signal: signalFor(args) })) {
        if (event.name === 'FINAL_PEER' && !seen.has(event.peer.id.toString())) {
          seen.add(event.peer.id.toString())
          peers.push({ peer_id: event.peer.id.toString(), addrs: event.peer.multiaddrs.map(a => a.toString()) })
        }
      }
      return { peers: peers.map(p => p.peer_id), peer_infos: peers }
    },

    async perf (args) {
      const upload = byteCount(args, 'upload')
      const download = byteCount(args, 'download')
      const signal = signalFor(args)
      const conn = await connectionTo(args.peer, signal)
      const stream = await conn.newStream(PERF_PROTOCOL, { signal })
      let downloaded = 0
      try {
        // listening before the first byte goes out: see readToEnd
        const received = readToEnd(stream, (buf) => {
          downloaded += buf.byteLength
          if (downloaded > download) throw new Error(`perf: the server sent more than the ${download} bytes asked for`)
        }, signal)
        received.catch(() => {}) // awaited below; a failure while uploading must not go unhandled
        // Timed as go's and physarum's clients time it, from after the stream is open and
        // /perf/1.0.0 negotiated: upload_us from the first byte (the 8-byte header) handed to the
        // stream until close() resolved, i.e. js's yamux took every upload byte and the FIN for the
        // connection (sent, not yet read by the server); download_us from then until the server's
        // FIN with every byte asked for received. Their sum is one perf run's time; unlike
        // @libp2p/perf's "final" timeSeconds it leaves out dialling and opening the stream.
        const t0 = process.hrtime.bigint()
        const header = new Uint8Array(8)
        new DataView(header.buffer).setBigUint64(0, BigInt(download), false)
        if (!stream.send(header)) await stream.onDrain({ signal })
        await sendZeros(stream, upload, signal)
        await stream.close({ signal })
        const t1 = process.hrtime.bigint()
        await received
        const t2 = process.hrtime.bigint()
        if (downloaded !== download) throw new Error(`perf: asked for ${download} bytes, got ${downloaded}`)
        return {
          uploaded: upload,
          downloaded,
          upload_us: Number(t1 - t0) / 1000,
          download_us: Number(t2 - t1) / 1000
        }
      } catch (err) {
        stream.abort(err)
        throw err
      }
    },

    async routing_table () {
      const peers = [...dht().routingTable.kb.toIterable()].map(c => c.peerId.toString())
      return { peers, mode: dht().getMode() }
    }
  }
}

// ------------------------------------------------------------------ main ----

async function main () {
  let opts
  let node
  try {
    opts = parseArgs(process.argv.slice(2))
    node = await makeNode(opts)
    // Served on every node, as by the go partner: the spec asks nodes not to serve perf unless told
    // to, and starting this partner is that.
    await node.handle(PERF_PROTOCOL, servePerf, {
      maxInboundStreams: PERF_MAX_STREAMS,
      maxOutboundStreams: PERF_MAX_STREAMS
    })
  } catch (err) {
    log('start-up failed:', errorText(err), err?.stack ?? '')
    emit({ event: 'fatal', error: errorText(err) })
    process.exitCode = 1
    return
  }

  node.addEventListener('peer:connect', (evt) => emit({ event: 'connect', peer_id: evt.detail.toString() }))
  node.addEventListener('peer:disconnect', (evt) => emit({ event: 'disconnect', peer_id: evt.detail.toString() }))
  node.addEventListener('peer:identify', (evt) => emit({
    event: 'identify',
    peer_id: evt.detail.peerId.toString(),
    protocols: [...evt.detail.protocols].sort(),
    listen_addrs: evt.detail.listenAddrs.map(a => a.toString())
  }))
  if (opts.kad) {
    const rt = node.services.dht.routingTable
    rt.addEventListener('peer:add', (evt) => emit({ event: 'kad_add', peer_id: evt.detail.toString() }))
    rt.addEventListener('peer:remove', (evt) => emit({ event: 'kad_remove', peer_id: evt.detail.toString() }))
  }

  const commands = makeCommands(node, opts)
  let stopping = false

  async function shutdown (code) {
    if (stopping) return
    stopping = true
    const timer = setTimeout(() => { log('libp2p.stop() timed out'); process.exit(code) }, 5000)
    try { await node.stop() } catch (err) { log('stop failed:', errorText(err)) }
    clearTimeout(timer)
    // let stdout drain before exiting
    process.stdout.write('', () => process.exit(code))
  }

  async function handle (line) {
    let msg
    try {
      msg = JSON.parse(line)
    } catch (err) {
      emit({ id: null, ok: false, error: `invalid JSON: ${errorText(err)}` })
      return
    }
    const id = msg?.id ?? null
    if (msg == null || typeof msg !== 'object' || typeof msg.cmd !== 'string') {
      emit({ id, ok: false, error: 'a command is an object with a "cmd" string' })
      return
    }
    if (msg.cmd === 'stop') {
      emit({ id, ok: true })
      await shutdown(0)
      return
    }
    const fn = Object.hasOwn(commands, msg.cmd) ? commands[msg.cmd] : null
    if (fn == null) {
      emit({ id, ok: false, error: `unknown command ${msg.cmd}` })
      return
    }
    try {
      const result = await fn(msg)
      emit({ id, ok: true, ...result })
    } catch (err) {
      log(`command ${msg.cmd} (id ${id}) failed:`, errorText(err))
      emit({ id, ok: false, error: errorText(err) })
    }
  }

  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity })
  rl.on('line', (line) => {
    if (line.trim().length === 0) return
    handle(line).catch(err => log('handler crashed:', errorText(err)))
  })
  rl.on('close', () => { void shutdown(0) })

  emit({
    event: 'ready',
    peer_id: node.peerId.toString(),
    addrs: node.getMultiaddrs().map(a => a.toString()),
    kad: opts.kad,
    pnet: opts.pskFile != null
  })
  log(`ready ${node.peerId} ${node.getMultiaddrs().map(a => a.toString()).join(' ')}`)
}

await main()

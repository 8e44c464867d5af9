// A go-libp2p peer process driven over stdin/stdout with JSON lines: physarum's go-libp2p interop
// partner. It speaks the protocol of tests/interop/partner.py and mirrors the js partner
// (tests/interop/js/peer.mjs): same flags, same command names, same reply fields where they exist.
// stdout carries ONLY protocol JSON; every log line goes to stderr.
//
// Usage:
//
//	gopeer [--listen MADDR]... [--no-listen] [--psk-file PATH] [--kad] [--seed HEX64]
//	       [--security noise|tls|noise,tls|tls,noise] [--bootstrap MADDR]... [--no-auto-refresh]
//
// MADDR is /ip4/127.0.0.1/tcp/N (TCP is the only transport: go-libp2p refuses a private network
// on QUIC or WebTransport). Noise (or TLS 1.0.0 with --security) and yamux, pnet with a swarm key
// file. --kad runs go-libp2p-kad-dht in server mode on /ipfs/kad/1.0.0; --bootstrap (repeatable,
// needs --kad) connects there at start-up and fills the routing table from it.
// --no-auto-refresh: kad-dht refreshes its table (self-lookup) when the first peer arrives and
// every 10 minutes; without that, lookups run only on command, so a test can tell which peer
// answered one.
//
// Out (events):  {"event":"ready","peer_id":...,"addrs":[".../p2p/<id>"],"kad":bool,"pnet":bool,"versions":{...}}
//
//	{"event":"connect","peer_id":...}   {"event":"disconnect","peer_id":...}
//	{"event":"identify","peer_id":...,"protocols":[...],"listen_addrs":[...],"signed_peer_record":bool}
//	{"event":"kad_add","peer_id":...}   {"event":"kad_remove","peer_id":...}
//	{"event":"fatal","error":...}  (start-up failed; the process exits 1)
//
// In (commands): {"id":N,"cmd":"...",...} -> {"id":N,"ok":true,...} | {"id":N,"ok":false,"error":"..."}
//
//	dial, ping, bench_ping, bench_connect, identify, peerstore, peers, hangup, ping_stats,
//	echo, find_peer, closest_peers, routing_table, bootstrap, provide, find_providers,
//	put_contact, get_contact (the kad ones need --kad), stop.
//
// The partner also answers /physarum-test/echo/1.0.0 (echoes a stream until the writer's EOF,
// then closes): with the echo command, bulk data crosses yamux flow control both ways.
//
// Every command accepts "timeout_ms" (default 10000, as the js partner). Commands run
// concurrently; a failing command never kills the process. The process exits 0 on "stop" or
// when stdin closes.
//
// Network safety: a connection gater refuses to dial anything but /ip4/127.0.0.1, DNS
// resolution is refused, and there is no bootstrap list, mDNS, relay, NAT port mapping or
// AutoNAT. Only 127.0.0.1 is ever contacted.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/record"
	"github.com/libp2p/go-libp2p/core/routing"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	mh "github.com/multiformats/go-multihash"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	kadProtocol      = "/ipfs/kad/1.0.0"
	echoProtocol     = "/physarum-test/echo/1.0.0"
	perfProtocol     = "/perf/1.0.0"
	perfBlock        = 64 << 10
	defaultTimeoutMS = 10_000
	// go-libp2p-kad-dht insists that a DHT on the /ipfs prefix (the public Amino DHT) validates
	// exactly the /pk and /ipns namespaces. physarum's contact records live under /physarum/,
	// so the DHT runs under its own prefix and speaks /ipfs/kad/1.0.0 through the override:
	// the wire protocol is the same, only the local validator list differs.
	dhtPrefix = "/physarum-interop"
)

// ------------------------------------------------------------------ output --

var (
	outMu  sync.Mutex
	logger = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[go-peer %d] %s\n", os.Getpid(), fmt.Sprintf(format, args...))
	}
)

func emit(obj map[string]any) {
	line, err := json.Marshal(obj)
	if err != nil {
		logger("cannot encode %v: %v", obj, err)
		return
	}
	outMu.Lock()
	defer outMu.Unlock()
	_, _ = os.Stdout.Write(append(line, '\n'))
}

// --------------------------------------------------------------- arguments --

type options struct {
	listen    []string
	noListen  bool
	pskFile   string
	kad       bool
	seed      string
	security  []string
	bootstrap []string
	noRefresh bool
}

func parseArgs(argv []string) (*options, error) {
	opts := &options{security: []string{"noise"}}
	for i := 0; i < len(argv); i++ {
		arg := argv[i]
		value := func() (string, error) {
			if i+1 >= len(argv) {
				return "", fmt.Errorf("%s needs a value", arg)
			}
			i++
			return argv[i], nil
		}
		var err error
		var v string
		switch arg {
		case "--listen":
			v, err = value()
			opts.listen = append(opts.listen, v)
		case "--no-listen":
			opts.noListen = true
		case "--psk-file":
			opts.pskFile, err = value()
		case "--kad":
			opts.kad = true
		case "--seed":
			opts.seed, err = value()
		case "--security":
			v, err = value()
			opts.security = strings.Split(v, ",")
		case "--bootstrap":
			v, err = value()
			opts.bootstrap = append(opts.bootstrap, v)
		case "--no-auto-refresh":
			opts.noRefresh = true
		default:
			return nil, fmt.Errorf("unknown argument %s", arg)
		}
		if err != nil {
			return nil, err
		}
	}
	if opts.noListen {
		opts.listen = nil
	} else if len(opts.listen) == 0 {
		opts.listen = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	if (len(opts.bootstrap) > 0 || opts.noRefresh) && !opts.kad {
		return nil, errors.New("--bootstrap and --no-auto-refresh need --kad")
	}
	return opts, nil
}

// -------------------------------------------------------- address checking --

// isLocal: /ip4/127.0.0.1/... is the only address we may contact.
func isLocal(addr ma.Multiaddr) bool {
	return len(addr) > 0 && addr[0].Code() == ma.P_IP4 && addr[0].Value() == "127.0.0.1"
}

func localMultiaddr(text string) (ma.Multiaddr, error) {
	addr, err := ma.NewMultiaddr(text)
	if err != nil {
		return nil, err
	}
	if !isLocal(addr) {
		return nil, fmt.Errorf("refusing to dial %s: only /ip4/127.0.0.1 may be contacted", text)
	}
	return addr, nil
}

// localGater refuses every dial that is not to 127.0.0.1, whatever a peer or the DHT said.
type localGater struct{}

func (localGater) InterceptPeerDial(peer.ID) bool                      { return true }
func (localGater) InterceptAddrDial(_ peer.ID, addr ma.Multiaddr) bool { return isLocal(addr) }
func (localGater) InterceptAccept(network.ConnMultiaddrs) bool         { return true }
func (localGater) InterceptSecured(network.Direction, peer.ID, network.ConnMultiaddrs) bool {
	return true
}
func (localGater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// noDNS refuses to resolve: a /dns or /dnsaddr address would otherwise send a DNS query out.
type noDNS struct{}

var errNoDNS = errors.New("DNS resolution is disabled in the interop partner")

func (noDNS) ResolveDNSAddr(context.Context, peer.ID, ma.Multiaddr, int, int) ([]ma.Multiaddr, error) {
	return nil, errNoDNS
}
func (noDNS) ResolveDNSComponent(context.Context, ma.Multiaddr, int) ([]ma.Multiaddr, error) {
	return nil, errNoDNS
}

// ------------------------------------------------------------------- node --

type node struct {
	opts   *options
	host   host.Host
	ids    identify.IDService
	dht    *dht.IpfsDHT
	priv   crypto.PrivKey
	pingIn atomic.Int64 // inbound ping streams
	pongs  atomic.Int64 // pings echoed

	idMu       sync.Mutex
	identified map[peer.ID]event.EvtPeerIdentificationCompleted
}

func moduleVersions() map[string]string {
	versions := map[string]string{"go": runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			switch dep.Path {
			case "github.com/libp2p/go-libp2p", "github.com/libp2p/go-libp2p-kad-dht":
				versions[dep.Path[len("github.com/libp2p/"):]] = dep.Version
			}
		}
	}
	return versions
}

func loadKey(seedHex string) (crypto.PrivKey, error) {
	if seedHex == "" {
		priv, _, err := crypto.GenerateEd25519Key(nil)
		return priv, err
	}
	seed, err := hex.DecodeString(seedHex)
	if err != nil || len(seed) != 32 {
		return nil, errors.New("--seed must be 64 hex digits (32 bytes)")
	}
	priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(seed))
	return priv, err
}

func makeNode(opts *options) (*node, error) {
	priv, err := loadKey(opts.seed)
	if err != nil {
		return nil, err
	}
	versions := moduleVersions()
	libp2pOpts := []libp2p.Option{
		libp2p.Identity(priv),
		libp2p.Transport(tcp.NewTCPTransport),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.ConnectionGater(localGater{}),
		libp2p.MultiaddrResolver(noDNS{}),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
		// our own ping handler (below) counts streams, so "ping on one stream" can be checked
		libp2p.Ping(false),
		libp2p.UserAgent(fmt.Sprintf("go-libp2p/%s physarum-interop-partner", versions["go-libp2p"])),
	}
	for _, name := range opts.security {
		switch name {
		case "noise":
			libp2pOpts = append(libp2pOpts, libp2p.Security(noise.ID, noise.New))
		case "tls":
			libp2pOpts = append(libp2pOpts, libp2p.Security(libp2ptls.ID, libp2ptls.New))
		default:
			return nil, fmt.Errorf("unknown security protocol %q (noise, tls)", name)
		}
	}
	if len(opts.listen) > 0 {
		for _, text := range opts.listen {
			if _, err := localMultiaddr(text); err != nil {
				return nil, fmt.Errorf("listen address: %w", err)
			}
		}
		libp2pOpts = append(libp2pOpts, libp2p.ListenAddrStrings(opts.listen...))
	} else {
		libp2pOpts = append(libp2pOpts, libp2p.NoListenAddrs)
	}
	if opts.pskFile != "" {
		file, err := os.Open(opts.pskFile)
		if err != nil {
			return nil, err
		}
		psk, err := pnet.DecodeV1PSK(file)
		file.Close()
		if err != nil {
			return nil, fmt.Errorf("swarm key file %s: %w", opts.pskFile, err)
		}
		libp2pOpts = append(libp2pOpts, libp2p.PrivateNetwork(psk))
	}
	h, err := libp2p.New(libp2pOpts...)
	if err != nil {
		return nil, err
	}
	n := &node{opts: opts, host: h, priv: priv, identified: map[peer.ID]event.EvtPeerIdentificationCompleted{}}
	idHost, ok := h.(interface{ IDService() identify.IDService })
	if !ok {
		h.Close()
		return nil, errors.New("the host has no identify service")
	}
	n.ids = idHost.IDService()
	service := ping.NewPingService(h)
	h.SetStreamHandler(ping.ID, func(s network.Stream) {
		n.pingIn.Add(1)
		service.PingHandler(&countingStream{Stream: s, writes: &n.pongs})
	})
	// libp2p's perf protocol (specs/perf/perf.md): read the uint64 to send back, read the upload to
	// its end, then send that many bytes and close.
	h.SetStreamHandler(perfProtocol, func(s network.Stream) {
		var header [8]byte
		if _, err := io.ReadFull(s, header[:]); err != nil {
			_ = s.Reset()
			return
		}
		if _, err := io.Copy(io.Discard, s); err != nil {
			_ = s.Reset()
			return
		}
		if err := writeZeros(s, binary.BigEndian.Uint64(header[:])); err != nil {
			_ = s.Reset()
			return
		}
		_ = s.Close()
	})
	h.SetStreamHandler(echoProtocol, func(s network.Stream) {
		if _, err := io.Copy(s, s); err != nil {
			logger("echo stream from %s: %v", s.Conn().RemotePeer(), err)
			_ = s.Reset()
			return
		}
		_ = s.Close()
	})

	if opts.kad {
		dhtOpts := []dht.Option{
			dht.Mode(dht.ModeServer),
			dht.ProtocolPrefix(dhtPrefix),
			dht.V1ProtocolOverride(kadProtocol),
			dht.NamespacedValidator("physarum", contactValidator{}),
		}
		if opts.noRefresh {
			dhtOpts = append(dhtOpts, dht.DisableAutoRefresh())
		}
		if len(opts.bootstrap) > 0 {
			infos, err := bootstrapInfos(opts.bootstrap)
			if err != nil {
				h.Close()
				return nil, err
			}
			dhtOpts = append(dhtOpts, dht.BootstrapPeers(infos...))
		}
		n.dht, err = dht.New(h, dhtOpts...)
		if err != nil {
			h.Close()
			return nil, err
		}
	}
	return n, nil
}

func bootstrapInfos(addrs []string) ([]peer.AddrInfo, error) {
	var infos []peer.AddrInfo
	for _, text := range addrs {
		addr, err := localMultiaddr(text)
		if err != nil {
			return nil, err
		}
		info, err := peer.AddrInfoFromP2pAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("bootstrap %s: %w", text, err)
		}
		infos = append(infos, *info)
	}
	return infos, nil
}

// countingStream counts the echoes the ping handler writes.
type countingStream struct {
	network.Stream
	writes *atomic.Int64
}

func (s *countingStream) Write(b []byte) (int, error) {
	n, err := s.Stream.Write(b)
	if err == nil {
		s.writes.Add(1)
	}
	return n, err
}

func (n *node) fullAddrs() []string {
	var out []string
	for _, a := range n.host.Addrs() {
		out = append(out, fmt.Sprintf("%s/p2p/%s", a, n.host.ID()))
	}
	return out
}

// watchEvents turns go-libp2p's event bus into partner events, and keeps each peer's last
// identify result for the identify command.
func (n *node) watchEvents() error {
	sub, err := n.host.EventBus().Subscribe([]any{
		new(event.EvtPeerConnectednessChanged),
		new(event.EvtPeerIdentificationCompleted),
	})
	if err != nil {
		return err
	}
	go func() {
		for ev := range sub.Out() {
			switch e := ev.(type) {
			case event.EvtPeerConnectednessChanged:
				switch e.Connectedness {
				case network.Connected:
					emit(map[string]any{"event": "connect", "peer_id": e.Peer.String()})
				case network.NotConnected:
					emit(map[string]any{"event": "disconnect", "peer_id": e.Peer.String()})
				}
			case event.EvtPeerIdentificationCompleted:
				n.idMu.Lock()
				n.identified[e.Peer] = e
				n.idMu.Unlock()
				emit(map[string]any{
					"event":              "identify",
					"peer_id":            e.Peer.String(),
					"protocols":          protocolStrings(e.Protocols),
					"listen_addrs":       addrStrings(e.ListenAddrs),
					"signed_peer_record": e.SignedPeerRecord != nil,
				})
			}
		}
	}()
	if n.dht != nil {
		// Set before anyone knows our address, so no peer can be added unseen.
		rt := n.dht.RoutingTable()
		added, removed := rt.PeerAdded, rt.PeerRemoved
		rt.PeerAdded = func(p peer.ID) {
			if added != nil {
				added(p)
			}
			emit(map[string]any{"event": "kad_add", "peer_id": p.String()})
		}
		rt.PeerRemoved = func(p peer.ID) {
			if removed != nil {
				removed(p)
			}
			emit(map[string]any{"event": "kad_remove", "peer_id": p.String()})
		}
	}
	return nil
}

// ------------------------------------------------------------- utilities --

type args map[string]any

func (a args) str(key string) string {
	if v, ok := a[key].(string); ok {
		return v
	}
	return ""
}

func (a args) num(key string, def int) int {
	if v, ok := a[key].(float64); ok {
		return int(v)
	}
	return def
}

func (a args) flag(key string) bool {
	v, ok := a[key].(bool)
	return ok && v
}

func (a args) timeout() time.Duration {
	return time.Duration(a.num("timeout_ms", defaultTimeoutMS)) * time.Millisecond
}

func protocolStrings[T ~string](ps []T) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, string(p))
	}
	sort.Strings(out)
	return out
}

func addrStrings(addrs []ma.Multiaddr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// peerIDOf: a peer id, or the /p2p/ part of a multiaddr.
func peerIDOf(text string) (peer.ID, error) {
	if text == "" {
		return "", errors.New("missing peer")
	}
	if strings.HasPrefix(text, "/") {
		addr, err := ma.NewMultiaddr(text)
		if err != nil {
			return "", err
		}
		info, err := peer.AddrInfoFromP2pAddr(addr)
		if err != nil {
			return "", fmt.Errorf("%s has no /p2p/ component: %w", text, err)
		}
		return info.ID, nil
	}
	return peer.Decode(text)
}

// target resolves a peer id or a full /ip4/127.0.0.1/.../p2p/<id> multiaddr; a multiaddr is
// dialled first (an open connection is reused).
func (n *node) target(ctx context.Context, text string) (peer.ID, error) {
	if strings.HasPrefix(text, "/") {
		addr, err := localMultiaddr(text)
		if err != nil {
			return "", err
		}
		info, err := peer.AddrInfoFromP2pAddr(addr)
		if err != nil {
			return "", err
		}
		if err := n.host.Connect(ctx, *info); err != nil {
			return "", err
		}
		return info.ID, nil
	}
	return peerIDOf(text)
}

func (n *node) connectionTo(ctx context.Context, text string) (network.Conn, error) {
	id, err := n.target(ctx, text)
	if err != nil {
		return nil, err
	}
	for _, c := range n.host.Network().ConnsToPeer(id) {
		if !c.IsClosed() {
			return c, nil
		}
	}
	if _, err := n.host.Network().DialPeer(ctx, id); err != nil {
		return nil, err
	}
	conns := n.host.Network().ConnsToPeer(id)
	if len(conns) == 0 {
		return nil, fmt.Errorf("no connection to %s", id)
	}
	return conns[0], nil
}

func (n *node) needDHT() (*dht.IpfsDHT, error) {
	if n.dht == nil {
		return nil, errors.New("kad is not enabled (start with --kad)")
	}
	return n.dht, nil
}

func (n *node) peerInfo(id peer.ID) map[string]any {
	return map[string]any{"peer_id": id.String(), "addrs": addrStrings(n.host.Peerstore().Addrs(id))}
}

// keyFromArgs: "key_hex" (raw bytes, hex) or "key_peer" (a peer id's multihash bytes).
func keyFromArgs(a args) ([]byte, error) {
	if h := a.str("key_hex"); h != "" {
		return hex.DecodeString(h)
	}
	id, err := peerIDOf(a.str("key_peer"))
	if err != nil {
		return nil, err
	}
	return []byte(id), nil
}

// cidFromArgs: provider keys are multihashes ("key_hex"), carried in a raw CIDv1 as kad-dht wants.
func cidFromArgs(a args) (cid.Cid, error) {
	raw, err := hex.DecodeString(a.str("key_hex"))
	if err != nil {
		return cid.Undef, err
	}
	hash, err := mh.Cast(raw)
	if err != nil {
		return cid.Undef, fmt.Errorf("key_hex is not a multihash: %w", err)
	}
	return cid.NewCidV1(cid.Raw, hash), nil
}

// ----------------------------------------------------------------- commands --

type command func(ctx context.Context, a args) (map[string]any, error)

func (n *node) commands() map[string]command {
	return map[string]command{
		"dial":           n.cmdDial,
		"ping":           n.cmdPing,
		"bench_ping":     n.cmdBenchPing,
		"bench_connect":  n.cmdBenchConnect,
		"identify":       n.cmdIdentify,
		"peerstore":      n.cmdPeerstore,
		"peers":          n.cmdPeers,
		"hangup":         n.cmdHangup,
		"ping_stats":     n.cmdPingStats,
		"echo":           n.cmdEcho,
		"perf":           n.cmdPerf,
		"find_peer":      n.cmdFindPeer,
		"closest_peers":  n.cmdClosestPeers,
		"routing_table":  n.cmdRoutingTable,
		"bootstrap":      n.cmdBootstrap,
		"provide":        n.cmdProvide,
		"find_providers": n.cmdFindProviders,
		"put_contact":    n.cmdPutContact,
		"get_contact":    n.cmdGetContact,
	}
}

func (n *node) cmdDial(ctx context.Context, a args) (map[string]any, error) {
	addr, err := localMultiaddr(a.str("addr"))
	if err != nil {
		return nil, err
	}
	info, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		return nil, err
	}
	if err := n.host.Connect(ctx, *info); err != nil {
		return nil, err
	}
	reply := map[string]any{"peer_id": info.ID.String()}
	if conns := n.host.Network().ConnsToPeer(info.ID); len(conns) > 0 {
		state := conns[0].ConnState()
		reply["remote_addr"] = conns[0].RemoteMultiaddr().String()
		reply["multiplexer"] = string(state.StreamMultiplexer)
		reply["encryption"] = string(state.Security)
	}
	return reply, nil
}

// pingRTTs pings count times on ONE stream (go-libp2p's ping client keeps its stream).
func (n *node) pingRTTs(ctx context.Context, a args) ([]time.Duration, error) {
	id, err := n.target(ctx, a.str("peer"))
	if err != nil {
		return nil, err
	}
	count := a.num("count", 1)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := ping.Ping(pctx, n.host, id)
	rtts := make([]time.Duration, 0, count)
	for len(rtts) < count {
		select {
		case res, ok := <-results:
			if !ok {
				return nil, fmt.Errorf("ping ended after %d of %d: %w", len(rtts), count, ctx.Err())
			}
			if res.Error != nil {
				return nil, res.Error
			}
			rtts = append(rtts, res.RTT)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return rtts, nil
}

func (n *node) cmdPing(ctx context.Context, a args) (map[string]any, error) {
	rtts, err := n.pingRTTs(ctx, a)
	if err != nil {
		return nil, err
	}
	ms := make([]float64, len(rtts))
	for i, r := range rtts {
		ms[i] = float64(r.Microseconds()) / 1000
	}
	return map[string]any{"rtts_ms": ms, "streams": 1}, nil
}

func (n *node) cmdBenchPing(ctx context.Context, a args) (map[string]any, error) {
	rtts, err := n.pingRTTs(ctx, a)
	if err != nil {
		return nil, err
	}
	us := make([]float64, len(rtts))
	for i, r := range rtts {
		us[i] = float64(r.Nanoseconds()) / 1000
	}
	return map[string]any{"rtts_us": us, "streams": 1}, nil
}

func (n *node) cmdBenchConnect(ctx context.Context, a args) (map[string]any, error) {
	addr, err := localMultiaddr(a.str("addr"))
	if err != nil {
		return nil, err
	}
	info, err := peer.AddrInfoFromP2pAddr(addr)
	if err != nil {
		return nil, err
	}
	n.host.Peerstore().AddAddrs(info.ID, info.Addrs, time.Minute)
	times := []float64{}
	for i := 0; i < a.num("count", 1); i++ {
		// a fresh connection every time: the swarm would reuse an open one
		_ = n.host.Network().ClosePeer(info.ID)
		t0 := time.Now()
		if _, err := n.host.Network().DialPeer(ctx, info.ID); err != nil {
			return nil, err
		}
		times = append(times, float64(time.Since(t0).Nanoseconds())/1000)
		_ = n.host.Network().ClosePeer(info.ID)
	}
	return map[string]any{"times_us": times}, nil
}

func (n *node) cmdIdentify(ctx context.Context, a args) (map[string]any, error) {
	conn, err := n.connectionTo(ctx, a.str("peer"))
	if err != nil {
		return nil, err
	}
	select {
	case <-n.ids.IdentifyWait(conn):
	case <-ctx.Done():
		return nil, fmt.Errorf("identify did not finish: %w", ctx.Err())
	}
	// The bus delivers the result to watchEvents asynchronously: wait for it there.
	var result event.EvtPeerIdentificationCompleted
	for {
		n.idMu.Lock()
		e, ok := n.identified[conn.RemotePeer()]
		n.idMu.Unlock()
		if ok && e.Conn == conn {
			result = e
			break
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return nil, fmt.Errorf("identify of %s failed (no identify result): %w", conn.RemotePeer(), ctx.Err())
		}
	}
	reply := map[string]any{
		"source":             "identify",
		"peer_id":            result.Peer.String(),
		"protocols":          protocolStrings(result.Protocols),
		"listen_addrs":       addrStrings(result.ListenAddrs),
		"observed_addr":      nil,
		"agent_version":      result.AgentVersion,
		"protocol_version":   result.ProtocolVersion,
		"public_key_b64":     n.publicKeyB64(result.Peer),
		"signed_peer_record": nil,
	}
	if result.ObservedAddr != nil {
		reply["observed_addr"] = result.ObservedAddr.String()
	}
	// Set only when go-libp2p verified the envelope and it names this peer (identify drops it otherwise).
	if env := result.SignedPeerRecord; env != nil {
		rec, err := env.Record()
		if pr, ok := rec.(*peer.PeerRecord); err == nil && ok {
			reply["signed_peer_record"] = map[string]any{
				"peer_id": pr.PeerID.String(),
				"addrs":   addrStrings(pr.Addrs),
				"seq":     fmt.Sprint(pr.Seq),
			}
		}
	}
	return reply, nil
}

func (n *node) publicKeyB64(id peer.ID) any {
	key := n.host.Peerstore().PubKey(id)
	if key == nil {
		return nil
	}
	raw, err := crypto.MarshalPublicKey(key)
	if err != nil {
		return nil
	}
	return base64.StdEncoding.EncodeToString(raw)
}

func (n *node) cmdPeerstore(_ context.Context, a args) (map[string]any, error) {
	id, err := peerIDOf(a.str("peer"))
	if err != nil {
		return nil, err
	}
	ps := n.host.Peerstore()
	protocols, err := ps.GetProtocols(id)
	if err != nil {
		return nil, err
	}
	if len(protocols) == 0 && len(ps.Addrs(id)) == 0 {
		return nil, fmt.Errorf("peer %s is not in the peer store", id)
	}
	metadata := map[string]any{}
	for _, key := range []string{"AgentVersion", "ProtocolVersion"} {
		if v, err := ps.Get(id, key); err == nil {
			metadata[key] = v
		}
	}
	return map[string]any{
		"peer_id":        id.String(),
		"protocols":      protocolStrings(protocols),
		"addrs":          addrStrings(ps.Addrs(id)),
		"public_key_b64": n.publicKeyB64(id),
		"metadata":       metadata,
	}, nil
}

func (n *node) cmdPeers(context.Context, args) (map[string]any, error) {
	peers := []string{}
	for _, p := range n.host.Network().Peers() {
		peers = append(peers, p.String())
	}
	sort.Strings(peers)
	return map[string]any{"peers": peers}, nil
}

func (n *node) cmdHangup(_ context.Context, a args) (map[string]any, error) {
	id, err := peerIDOf(a.str("peer"))
	if err != nil {
		return nil, err
	}
	return map[string]any{}, n.host.Network().ClosePeer(id)
}

func (n *node) cmdPingStats(context.Context, args) (map[string]any, error) {
	return map[string]any{"inbound_streams": n.pingIn.Load(), "echoes": n.pongs.Load()}, nil
}

// echo sends "size" random bytes on one /physarum-test/echo/1.0.0 stream while reading the echo,
// half-closes, and checks that the same bytes came back before the peer's EOF.
func (n *node) cmdEcho(ctx context.Context, a args) (map[string]any, error) {
	id, err := n.target(ctx, a.str("peer"))
	if err != nil {
		return nil, err
	}
	s, err := n.host.NewStream(ctx, id, echoProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(deadline)
	}
	payload := make([]byte, a.num("size", 1<<20))
	if _, err := rand.Read(payload); err != nil {
		return nil, err
	}
	start := time.Now()
	written := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		if err == nil {
			err = s.CloseWrite()
		}
		written <- err
	}()
	echoed, err := io.ReadAll(s)
	if err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("reading the echo after %d bytes: %w", len(echoed), err)
	}
	if err := <-written; err != nil {
		return nil, err
	}
	if !bytes.Equal(echoed, payload) {
		return nil, fmt.Errorf("echo differs: sent %d bytes, got %d back", len(payload), len(echoed))
	}
	return map[string]any{"bytes": len(echoed), "elapsed_us": time.Since(start).Microseconds()}, nil
}

func writeZeros(w io.Writer, n uint64) error {
	block := make([]byte, perfBlock)
	for n > 0 {
		chunk := uint64(len(block))
		if n < chunk {
			chunk = n
		}
		if _, err := w.Write(block[:chunk]); err != nil {
			return err
		}
		n -= chunk
	}
	return nil
}

// perf is the perf protocol's client: "upload" bytes up, "download" bytes back, each direction timed.
func (n *node) cmdPerf(ctx context.Context, a args) (map[string]any, error) {
	id, err := n.target(ctx, a.str("peer"))
	if err != nil {
		return nil, err
	}
	s, err := n.host.NewStream(ctx, id, perfProtocol)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(deadline)
	}
	upload, download := uint64(a.num("upload", 0)), uint64(a.num("download", 0))
	start := time.Now()
	var header [8]byte
	binary.BigEndian.PutUint64(header[:], download)
	if _, err := s.Write(header[:]); err != nil {
		return nil, err
	}
	if err := writeZeros(s, upload); err != nil {
		return nil, err
	}
	if err := s.CloseWrite(); err != nil {
		return nil, err
	}
	uploaded := time.Now()
	got, err := io.Copy(io.Discard, s)
	if err != nil {
		_ = s.Reset()
		return nil, fmt.Errorf("perf download after %d bytes: %w", got, err)
	}
	if uint64(got) != download {
		return nil, fmt.Errorf("perf: asked for %d bytes, got %d", download, got)
	}
	return map[string]any{
		"uploaded": upload, "downloaded": got,
		"upload_us": uploaded.Sub(start).Microseconds(), "download_us": time.Since(uploaded).Microseconds(),
	}, nil
}

func (n *node) cmdFindPeer(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	id, err := peerIDOf(a.str("peer"))
	if err != nil {
		return nil, err
	}
	if a.flag("use_cache") {
		if info := d.FindLocal(ctx, id); info.ID != "" {
			return map[string]any{"peer_id": id.String(), "addrs": addrStrings(info.Addrs), "from": nil}, nil
		}
	}
	// "from": the first peer whose FIND_NODE answer named the target (the js partner says the same).
	qctx, qcancel := context.WithCancel(ctx)
	qctx, events := routing.RegisterForQueryEvents(qctx)
	var from peer.ID
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range events { // closed once qctx ends
			if ev.Type != routing.PeerResponse || from != "" {
				continue
			}
			for _, info := range ev.Responses {
				if info.ID == id {
					from = ev.ID
				}
			}
		}
	}()
	info, err := d.FindPeer(qctx, id)
	qcancel()
	<-done
	if err != nil {
		return nil, fmt.Errorf("peer %s not found: %w", id, err)
	}
	reply := map[string]any{"peer_id": info.ID.String(), "addrs": addrStrings(info.Addrs), "from": nil}
	if from != "" {
		reply["from"] = from.String()
	}
	return reply, nil
}

func (n *node) cmdClosestPeers(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	key, err := keyFromArgs(a)
	if err != nil {
		return nil, err
	}
	ids, err := d.GetClosestPeers(ctx, string(key))
	if err != nil {
		return nil, err
	}
	peers, infos := []string{}, []any{}
	for _, id := range ids {
		peers = append(peers, id.String())
		infos = append(infos, n.peerInfo(id))
	}
	return map[string]any{"peers": peers, "peer_infos": infos}, nil
}

func (n *node) cmdRoutingTable(context.Context, args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	peers := []string{}
	for _, p := range d.RoutingTable().ListPeers() {
		peers = append(peers, p.String())
	}
	sort.Strings(peers)
	return map[string]any{"peers": peers, "mode": "server"}, nil
}

// bootstrap connects to "addrs" (full /p2p/ multiaddrs) and refreshes the routing table through them.
func (n *node) cmdBootstrap(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	var texts []string
	if list, ok := a["addrs"].([]any); ok {
		for _, v := range list {
			if s, ok := v.(string); ok {
				texts = append(texts, s)
			}
		}
	}
	infos, err := bootstrapInfos(texts)
	if err != nil {
		return nil, err
	}
	for _, info := range infos {
		if err := n.host.Connect(ctx, info); err != nil {
			return nil, fmt.Errorf("connect %s: %w", info.ID, err)
		}
	}
	// A peer enters the table only after identify and a FIND_NODE check: refreshing before
	// that would find the table empty.
	for _, info := range infos {
		for d.RoutingTable().Find(info.ID) == "" {
			select {
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return nil, fmt.Errorf("%s never entered the routing table: %w", info.ID, ctx.Err())
			}
		}
	}
	select {
	case err := <-d.RefreshRoutingTable():
		if err != nil {
			return nil, err
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return map[string]any{"routing_table_size": d.RoutingTable().Size()}, nil
}

func (n *node) cmdProvide(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	c, err := cidFromArgs(a)
	if err != nil {
		return nil, err
	}
	if err := d.Provide(ctx, c, true); err != nil {
		return nil, err
	}
	return map[string]any{"cid": c.String()}, nil
}

func (n *node) cmdFindProviders(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	c, err := cidFromArgs(a)
	if err != nil {
		return nil, err
	}
	providers := []any{}
	for info := range d.FindProvidersAsync(ctx, c, a.num("count", 20)) {
		providers = append(providers, map[string]any{"peer_id": info.ID.String(), "addrs": addrStrings(info.Addrs)})
	}
	if ctx.Err() != nil && len(providers) == 0 {
		return nil, ctx.Err()
	}
	return map[string]any{"providers": providers}, nil
}

// put_contact signs a physarum contact record (see contact.go) and stores it with PUT_VALUE.
// Fields: "record_id" (default: our peer id), "data" (a JSON object), "endpoints" (default: our
// addresses), "ttl_s" (default 3600).
func (n *node) cmdPutContact(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	id := a.str("record_id")
	if id == "" {
		id = n.host.ID().String()
	}
	data := a["data"]
	if data == nil {
		data = map[string]any{}
	}
	rawData, err := json.Marshal(data)
	if err != nil {
		return nil, err
	}
	var endpoints [][]byte
	if list, ok := a["endpoints"].([]any); ok {
		for _, v := range list {
			addr, err := ma.NewMultiaddr(fmt.Sprint(v))
			if err != nil {
				return nil, err
			}
			endpoints = append(endpoints, addr.Bytes())
		}
	} else {
		for _, addr := range n.host.Addrs() {
			endpoints = append(endpoints, addr.Bytes())
		}
	}
	now := time.Now()
	rec := &contactRecord{
		ID:        id,
		Endpoints: endpoints,
		Data:      rawData,
		Seq:       uint64(now.UnixMilli()),
		Expires:   uint64(now.Unix()) + uint64(a.num("ttl_s", 3600)),
	}
	env, err := record.Seal(rec, n.priv)
	if err != nil {
		return nil, err
	}
	raw, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	key := contactKeyPrefix + id
	if err := d.PutValue(ctx, key, encodeRecordSet([][]byte{raw})); err != nil {
		return nil, err
	}
	return map[string]any{"key": key, "record_id": id, "seq": fmt.Sprint(rec.Seq)}, nil
}

// get_contact finds the record set for "record_id" with GET_VALUE and returns every record in it,
// each verified here (signature, id, publisher, expiry) by go-libp2p's envelope code.
func (n *node) cmdGetContact(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	key := contactKeyPrefix + a.str("record_id")
	value, err := d.GetValue(ctx, key)
	if err != nil {
		return nil, err
	}
	records, err := verifyRecordSet(key, value, time.Now())
	if err != nil {
		return nil, err
	}
	out := []any{}
	for _, vr := range records {
		var data any
		if err := json.Unmarshal(vr.rec.Data, &data); err != nil {
			return nil, fmt.Errorf("record data is not JSON: %w", err)
		}
		endpoints := []string{}
		for _, raw := range vr.rec.Endpoints {
			if addr, err := ma.NewMultiaddrBytes(raw); err == nil {
				endpoints = append(endpoints, addr.String())
			}
		}
		out = append(out, map[string]any{
			"record_id": vr.rec.ID,
			"publisher": vr.publisher.String(),
			"endpoints": endpoints,
			"data":      data,
			"seq":       fmt.Sprint(vr.rec.Seq),
			"expires":   vr.rec.Expires,
		})
	}
	return map[string]any{"records": out}, nil
}

// ----------------------------------------------------- contact records --

// physarum's signed contact records (src/physarum/dht/records.py): a libp2p signed envelope
// (domain "physarum-contact-record", payload type "/physarum/contact-record/1") around
// ContactRecord{id=1 string, endpoints=2 repeated bytes, data=3 bytes, seq=4 uint64,
// expires=5 uint64}; the kad value is RecordSet{envelope=1 repeated bytes}, under the key
// /physarum/contact/<id>.
const (
	contactDomain    = "physarum-contact-record"
	contactKeyPrefix = "/physarum/contact/"
)

var contactCodec = []byte("/physarum/contact-record/1")

type contactRecord struct {
	ID        string
	Endpoints [][]byte
	Data      []byte
	Seq       uint64
	Expires   uint64
}

func (r *contactRecord) Domain() string { return contactDomain }
func (r *contactRecord) Codec() []byte  { return contactCodec }

func (r *contactRecord) MarshalRecord() ([]byte, error) {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, r.ID)
	for _, e := range r.Endpoints {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, r.Data)
	b = protowire.AppendTag(b, 4, protowire.VarintType)
	b = protowire.AppendVarint(b, r.Seq)
	b = protowire.AppendTag(b, 5, protowire.VarintType)
	b = protowire.AppendVarint(b, r.Expires)
	return b, nil
}

func (r *contactRecord) UnmarshalRecord(b []byte) error {
	*r = contactRecord{}
	return walkProto(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			r.ID = string(v)
		case num == 2 && typ == protowire.BytesType:
			r.Endpoints = append(r.Endpoints, append([]byte(nil), v...))
		case num == 3 && typ == protowire.BytesType:
			r.Data = append([]byte(nil), v...)
		case num == 4 && typ == protowire.VarintType:
			r.Seq = x
		case num == 5 && typ == protowire.VarintType:
			r.Expires = x
		}
		return nil
	})
}

// walkProto calls fn for each field of a protobuf message (unknown fields included).
func walkProto(b []byte, fn func(protowire.Number, protowire.Type, []byte, uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		var value []byte
		var x uint64
		switch typ {
		case protowire.BytesType:
			value, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := fn(num, typ, value, x); err != nil {
			return err
		}
	}
	return nil
}

func encodeRecordSet(envelopes [][]byte) []byte {
	var b []byte
	for _, e := range envelopes {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	return b
}

func decodeRecordSet(b []byte) ([][]byte, error) {
	var out [][]byte
	err := walkProto(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num == 1 && typ == protowire.BytesType {
			out = append(out, append([]byte(nil), v...))
		}
		return nil
	})
	return out, err
}

type verifiedRecord struct {
	rec       *contactRecord
	publisher peer.ID
}

// verifyRecordSet checks every envelope of a record set stored under key.
func verifyRecordSet(key string, value []byte, now time.Time) ([]verifiedRecord, error) {
	if !strings.HasPrefix(key, contactKeyPrefix) || len(key) == len(contactKeyPrefix) {
		return nil, fmt.Errorf("%q is not a physarum contact record key", key)
	}
	id := key[len(contactKeyPrefix):]
	envelopes, err := decodeRecordSet(value)
	if err != nil {
		return nil, fmt.Errorf("record set: %w", err)
	}
	if len(envelopes) == 0 {
		return nil, errors.New("empty record set")
	}
	var out []verifiedRecord
	for _, raw := range envelopes {
		rec := &contactRecord{}
		env, err := record.ConsumeTypedEnvelope(raw, rec)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(env.PayloadType, contactCodec) {
			return nil, fmt.Errorf("payload type %q is not a contact record", env.PayloadType)
		}
		publisher, err := peer.IDFromPublicKey(env.PublicKey)
		if err != nil {
			return nil, err
		}
		if rec.ID != id {
			return nil, fmt.Errorf("record for %q stored under %q", rec.ID, key)
		}
		if named, err := peer.Decode(id); err == nil && named != publisher {
			return nil, fmt.Errorf("record for peer %s signed by %s", named, publisher)
		}
		if rec.Expires <= uint64(now.Unix()) {
			return nil, fmt.Errorf("record of %s expired", publisher)
		}
		out = append(out, verifiedRecord{rec, publisher})
	}
	return out, nil
}

// contactValidator lets kad-dht store, serve and choose among physarum contact record sets.
type contactValidator struct{}

func (contactValidator) Validate(key string, value []byte) error {
	_, err := verifyRecordSet(key, value, time.Now())
	return err
}

// Select prefers the set holding the highest seq (first one on ties).
func (contactValidator) Select(key string, values [][]byte) (int, error) {
	best, bestSeq := -1, uint64(0)
	for i, v := range values {
		records, err := verifyRecordSet(key, v, time.Now())
		if err != nil {
			continue
		}
		for _, r := range records {
			if best < 0 || r.rec.Seq > bestSeq {
				best, bestSeq = i, r.rec.Seq
			}
		}
	}
	if best < 0 {
		return 0, errors.New("no valid contact record set")
	}
	return best, nil
}

// -------------------------------------------------------------------- main --

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts, err := parseArgs(os.Args[1:])
	var n *node
	if err == nil {
		n, err = makeNode(opts)
	}
	if err == nil {
		err = n.watchEvents()
	}
	if err != nil {
		logger("start-up failed: %v", err)
		emit(map[string]any{"event": "fatal", "error": err.Error()})
		os.Exit(1)
	}

	var stopOnce sync.Once
	shutdown := func() {
		stopOnce.Do(func() {
			timer := time.AfterFunc(5*time.Second, func() {
				logger("close timed out")
				os.Exit(0)
			})
			if n.dht != nil {
				_ = n.dht.Close()
			}
			if err := n.host.Close(); err != nil {
				logger("close failed: %v", err)
			}
			timer.Stop()
			os.Exit(0)
		})
	}

	if len(opts.bootstrap) > 0 {
		infos, _ := bootstrapInfos(opts.bootstrap)
		for _, info := range infos {
			bctx, bcancel := context.WithTimeout(ctx, defaultTimeoutMS*time.Millisecond)
			if err := n.host.Connect(bctx, info); err != nil {
				logger("bootstrap %s failed: %v", info.ID, err)
			}
			bcancel()
		}
	}

	commands := n.commands()
	handle := func(line string) {
		var msg map[string]any
		if err := json.Unmarshal([]byte(line), &msg); err != nil {
			emit(map[string]any{"id": nil, "ok": false, "error": "invalid JSON: " + err.Error()})
			return
		}
		id := msg["id"]
		name, ok := msg["cmd"].(string)
		if !ok {
			emit(map[string]any{"id": id, "ok": false, "error": `a command is an object with a "cmd" string`})
			return
		}
		if name == "stop" {
			emit(map[string]any{"id": id, "ok": true})
			shutdown()
			return
		}
		fn, ok := commands[name]
		if !ok {
			emit(map[string]any{"id": id, "ok": false, "error": "unknown command " + name})
			return
		}
		a := args(msg)
		cctx, ccancel := context.WithTimeout(ctx, a.timeout())
		defer ccancel()
		reply, err := fn(cctx, a)
		if err != nil {
			logger("command %s (id %v) failed: %v", name, id, err)
			emit(map[string]any{"id": id, "ok": false, "error": err.Error()})
			return
		}
		reply["id"] = id
		reply["ok"] = true
		emit(reply)
	}

	versions := moduleVersions()
	emit(map[string]any{
		"event":    "ready",
		"peer_id":  n.host.ID().String(),
		"addrs":    n.fullAddrs(),
		"kad":      n.dht != nil,
		"pnet":     opts.pskFile != "",
		"versions": versions,
	})
	logger("ready %s %s", n.host.ID(), strings.Join(n.fullAddrs(), " "))

	scanner := bufio.NewScanner(os.Stdin)
	scanner.Buffer(make([]byte, 1<<16), 1<<24)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line != "" {
			go handle(line)
		}
	}
	shutdown()
}

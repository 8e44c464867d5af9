// A go-libp2p v0.9 peer configured as PhysarumSM configures its hosts, driven over stdin/stdout
// with JSON lines: physarum's "PhysarumSM node" interop partner. It speaks the protocol of
// tests/interop/partner.py, with the command names and reply fields of tests/interop/go/main.go
// where they exist. stdout carries ONLY protocol JSON; every log line goes to stderr.
//
// PhysarumSM (Multi-Tier-Cloud/common p2pnode.NewNode, pinned by its services at go-libp2p v0.9.2,
// go-libp2p-kad-dht v0.7.11) builds every host as
//
//	libp2p.New(ctx, libp2p.Identity(key), libp2p.ListenAddrs(...), libp2p.PrivateNetwork(psk))
//	dht.New(ctx, host, dht.Mode(dht.ModeServer))
//
// with the PSK = SHA3-256(passphrase) of its -psk flag, and everything else left at go-libp2p
// v0.9.2's defaults: an RSA-2048 identity, security secio then TLS 1.0.0 (no Noise), muxers yamux
// then mplex, TCP and WebSocket transports, relay enabled; kad-dht speaks /ipfs/kad/1.0.0 (its
// "v1 compatible" default) with the pk and ipns validators. This program does the same. The
// only departures, none of them visible on the wire:
//   - the security transports and muxers are passed explicitly, in the default order, wrapped so
//     the dial command can say which were negotiated (v0.9 has no Conn.ConnState);
//   - our own ping handler (the v0.9 one, counting streams and echoes) instead of libp2p.Ping;
//   - a connection gater that refuses every dial that is not to 127.0.0.1.
//
// Usage:
//
//	go09peer [--listen MADDR]... [--psk PASSPHRASE | --psk-file PATH]
//	         [--key-type rsa|ed25519|ecdsa|secp256k1] [--no-kad] [--no-auto-refresh]
//	         [--bootstrap MADDR]...
//
// --psk derives the key as PhysarumSM does (SHA3-256 of the passphrase; an empty passphrase means
// a random key, as there); --psk-file reads a libp2p v1 swarm key file. --key-type picks the
// identity (default rsa, 2048 bits: go-libp2p v0.9's default). kad-dht runs in server mode unless
// --no-kad; --no-auto-refresh stops its own lookups (self-lookup when the first peer arrives and
// every 10 minutes), so a test can tell which peer answered one. --bootstrap (repeatable) dials
// that peer at start-up, as a PhysarumSM node joins its bootstrap.
//
// Out (events):  {"event":"ready","peer_id":...,"addrs":[".../p2p/<id>"],"kad":bool,"pnet":bool,
//
//	"key_type":...,"security":[...],"muxers":[...],"versions":{...}}
//	{"event":"connect","peer_id":...}   {"event":"disconnect","peer_id":...}
//	{"event":"identify","peer_id":...,"protocols":[...],"listen_addrs":[...],"signed_peer_record":bool}
//	{"event":"kad_add","peer_id":...}   {"event":"kad_remove","peer_id":...}
//	{"event":"fatal","error":...}  (start-up failed; the process exits 1)
//
// In (commands): {"id":N,"cmd":"...",...} -> {"id":N,"ok":true,...} | {"id":N,"ok":false,"error":"..."}
//
//	dial, ping, identify, peerstore, peers, hangup, ping_stats, find_peer, closest_peers,
//	routing_table, stop.
//
// Every command accepts "timeout_ms" (default 10000). Commands run concurrently; a failing
// command never kills the process. The process exits 0 on "stop" or when stdin closes.
//
// Network safety: the gater refuses to dial anything but /ip4/127.0.0.1, listen addresses must
// be 127.0.0.1, no bootstrap list is used (kad-dht v0.7 dials none by itself), and there is no
// mDNS, NAT port mapping or auto-relay (v0.9 enables none of them by default). DNS is never
// needed: no address given to or learnt by this program in the tests is a /dns one.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p-core/control"
	"github.com/libp2p/go-libp2p-core/crypto"
	"github.com/libp2p/go-libp2p-core/event"
	"github.com/libp2p/go-libp2p-core/host"
	"github.com/libp2p/go-libp2p-core/mux"
	"github.com/libp2p/go-libp2p-core/network"
	"github.com/libp2p/go-libp2p-core/peer"
	"github.com/libp2p/go-libp2p-core/peerstore"
	"github.com/libp2p/go-libp2p-core/pnet"
	"github.com/libp2p/go-libp2p-core/routing"
	"github.com/libp2p/go-libp2p-core/sec"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	mplex "github.com/libp2p/go-libp2p-mplex"
	secio "github.com/libp2p/go-libp2p-secio"
	libp2ptls "github.com/libp2p/go-libp2p-tls"
	yamux "github.com/libp2p/go-libp2p-yamux"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
	ma "github.com/multiformats/go-multiaddr"
	"golang.org/x/crypto/sha3"
)

const (
	defaultTimeoutMS = 10_000
	rsaBits          = 2048 // go-libp2p v0.9's RandomIdentity and PhysarumSM's -bits default
	yamuxID          = "/yamux/1.0.0"
	mplexID          = "/mplex/6.7.0"
)

// ------------------------------------------------------------------ output --

var (
	outMu  sync.Mutex
	logger = func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "[go09-peer %d] %s\n", os.Getpid(), fmt.Sprintf(format, args...))
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
	listen     []string
	psk        *string // --psk passphrase; nil when not given
	pskFile    string
	keyType    string
	kad        bool
	noRefresh  bool
	bootstraps []string
}

func parseArgs(argv []string) (*options, error) {
	opts := &options{keyType: "rsa", kad: true}
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
		case "--psk":
			v, err = value()
			opts.psk = &v
		case "--psk-file":
			opts.pskFile, err = value()
		case "--key-type":
			opts.keyType, err = value()
		case "--no-kad":
			opts.kad = false
		case "--no-auto-refresh":
			opts.noRefresh = true
		case "--bootstrap":
			v, err = value()
			opts.bootstraps = append(opts.bootstraps, v)
		default:
			return nil, fmt.Errorf("unknown argument %s", arg)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(opts.listen) == 0 {
		opts.listen = []string{"/ip4/127.0.0.1/tcp/0"}
	}
	if opts.psk != nil && opts.pskFile != "" {
		return nil, errors.New("give --psk or --psk-file, not both")
	}
	if opts.noRefresh && !opts.kad {
		return nil, errors.New("--no-auto-refresh needs kad (drop --no-kad)")
	}
	return opts, nil
}

// -------------------------------------------------------- address checking --

// isLocal: /ip4/127.0.0.1/... is the only address we may contact.
func isLocal(addr ma.Multiaddr) bool {
	first, _ := ma.SplitFirst(addr)
	return first != nil && first.Protocol().Code == ma.P_IP4 && first.Value() == "127.0.0.1"
}

func localMultiaddr(text string) (ma.Multiaddr, error) {
	addr, err := ma.NewMultiaddr(text)
	if err != nil {
		return nil, err
	}
	if !isLocal(addr) {
		return nil, fmt.Errorf("refusing %s: only /ip4/127.0.0.1 may be used", text)
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

// ---------------------------------------------------- negotiation recorder --

// negotiated remembers, per remote peer, the security protocol and muxer of its latest connection:
// go-libp2p v0.9's network.Conn does not say which were chosen.
type negotiated struct {
	mu       sync.Mutex
	security map[peer.ID]string
	muxer    map[peer.ID]string
}

func (n *negotiated) set(table map[peer.ID]string, p peer.ID, name string) {
	n.mu.Lock()
	table[p] = name
	n.mu.Unlock()
}

func (n *negotiated) get(p peer.ID) (string, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.security[p], n.muxer[p]
}

// recordingSecurity is a security transport that notes the peers it secured a connection with.
type recordingSecurity struct {
	sec.SecureTransport
	name string
	seen *negotiated
}

func (r recordingSecurity) SecureInbound(ctx context.Context, c net.Conn) (sec.SecureConn, error) {
	sc, err := r.SecureTransport.SecureInbound(ctx, c)
	if err == nil {
		r.seen.set(r.seen.security, sc.RemotePeer(), r.name)
	}
	return sc, err
}

func (r recordingSecurity) SecureOutbound(ctx context.Context, c net.Conn, p peer.ID) (sec.SecureConn, error) {
	sc, err := r.SecureTransport.SecureOutbound(ctx, c, p)
	if err == nil {
		r.seen.set(r.seen.security, sc.RemotePeer(), r.name)
	}
	return sc, err
}

// recordingMuxer is a stream muxer transport that notes the peers it multiplexed a connection for.
type recordingMuxer struct {
	mux.Multiplexer
	name string
	seen *negotiated
}

func (r recordingMuxer) NewConn(c net.Conn, isServer bool) (mux.MuxedConn, error) {
	mc, err := r.Multiplexer.NewConn(c, isServer)
	if sc, ok := c.(sec.SecureConn); ok && err == nil {
		r.seen.set(r.seen.muxer, sc.RemotePeer(), r.name)
	}
	return mc, err
}

// ------------------------------------------------------------------- node --

type node struct {
	opts   *options
	host   host.Host
	ids    *identify.IDService
	dht    *dht.IpfsDHT
	seen   *negotiated
	pingIn atomic.Int64 // inbound ping streams
	pongs  atomic.Int64 // pings echoed
}

var watchedModules = []string{
	"github.com/libp2p/go-libp2p",
	"github.com/libp2p/go-libp2p-core",
	"github.com/libp2p/go-libp2p-kad-dht",
	"github.com/libp2p/go-libp2p-tls",
	"github.com/libp2p/go-libp2p-secio",
	"github.com/libp2p/go-libp2p-pnet",
	"github.com/libp2p/go-libp2p-yamux",
	"github.com/libp2p/go-libp2p-mplex",
}

func moduleVersions() map[string]string {
	versions := map[string]string{"go": runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			for _, path := range watchedModules {
				if dep.Path == path {
					versions[path[len("github.com/libp2p/"):]] = dep.Version
				}
			}
		}
	}
	return versions
}

var keyTypes = map[string]int{
	"rsa":       crypto.RSA,
	"ed25519":   crypto.Ed25519,
	"secp256k1": crypto.Secp256k1,
	"ecdsa":     crypto.ECDSA,
}

func loadPSK(opts *options) (pnet.PSK, error) {
	switch {
	case opts.psk != nil && *opts.psk == "":
		// PhysarumSM's CreateRandPSK: SHA3-256 of 32 random bytes.
		seed := make([]byte, 32)
		if _, err := rand.Read(seed); err != nil {
			return nil, err
		}
		digest := sha3.Sum256(seed)
		return digest[:], nil
	case opts.psk != nil:
		digest := sha3.Sum256([]byte(*opts.psk))
		return digest[:], nil
	case opts.pskFile != "":
		file, err := os.Open(opts.pskFile)
		if err != nil {
			return nil, err
		}
		defer file.Close()
		psk, err := pnet.DecodeV1PSK(file)
		if err != nil {
			return nil, fmt.Errorf("swarm key file %s: %w", opts.pskFile, err)
		}
		return psk, nil
	}
	return nil, nil
}

func makeNode(ctx context.Context, opts *options) (*node, error) {
	keyType, ok := keyTypes[opts.keyType]
	if !ok {
		return nil, fmt.Errorf("unknown --key-type %q (rsa, ed25519, ecdsa, secp256k1)", opts.keyType)
	}
	priv, _, err := crypto.GenerateKeyPair(keyType, rsaBits)
	if err != nil {
		return nil, err
	}
	var listen []ma.Multiaddr
	for _, text := range opts.listen {
		addr, err := localMultiaddr(text)
		if err != nil {
			return nil, fmt.Errorf("listen address: %w", err)
		}
		listen = append(listen, addr)
	}
	psk, err := loadPSK(opts)
	if err != nil {
		return nil, err
	}

	seen := &negotiated{security: map[peer.ID]string{}, muxer: map[peer.ID]string{}}
	secioTpt, err := secio.New(priv)
	if err != nil {
		return nil, err
	}
	tlsTpt, err := libp2ptls.New(priv)
	if err != nil {
		return nil, err
	}
	libp2pOpts := []libp2p.Option{
		// PhysarumSM's three options (p2pnode.NewNode) ...
		libp2p.Identity(priv),
		libp2p.ListenAddrs(listen...),
		// ... go-libp2p v0.9.2's DefaultSecurity and DefaultMuxers, in their order ...
		libp2p.Security(secio.ID, recordingSecurity{secioTpt, secio.ID, seen}),
		libp2p.Security(libp2ptls.ID, recordingSecurity{tlsTpt, libp2ptls.ID, seen}),
		libp2p.Muxer(yamuxID, recordingMuxer{yamux.DefaultTransport, yamuxID, seen}),
		libp2p.Muxer(mplexID, recordingMuxer{mplex.DefaultTransport, mplexID, seen}),
		// ... and the test harness's own.
		libp2p.ConnectionGater(localGater{}),
		libp2p.Ping(false),
	}
	if psk != nil {
		libp2pOpts = append(libp2pOpts, libp2p.PrivateNetwork(psk))
	}
	h, err := libp2p.New(ctx, libp2pOpts...)
	if err != nil {
		return nil, err
	}
	n := &node{opts: opts, host: h, seen: seen}
	idHost, ok := h.(interface{ IDService() *identify.IDService })
	if !ok {
		h.Close()
		return nil, errors.New("the host has no identify service")
	}
	n.ids = idHost.IDService()
	service := &ping.PingService{Host: h}
	h.SetStreamHandler(ping.ID, func(s network.Stream) {
		n.pingIn.Add(1)
		service.PingHandler(&countingStream{Stream: s, writes: &n.pongs})
	})

	if opts.kad {
		dhtOpts := []dht.Option{dht.Mode(dht.ModeServer)}
		if opts.noRefresh {
			dhtOpts = append(dhtOpts, dht.DisableAutoRefresh())
		}
		n.dht, err = dht.New(ctx, h, dhtOpts...)
		if err != nil {
			h.Close()
			return nil, err
		}
	}
	return n, nil
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

// watchEvents turns go-libp2p's event bus into partner events.
func (n *node) watchEvents() error {
	// v0.9's swarm does not emit EvtPeerConnectednessChanged: connections are watched directly.
	n.host.Network().Notify(&network.NotifyBundle{
		ConnectedF: func(_ network.Network, c network.Conn) {
			emit(map[string]any{"event": "connect", "peer_id": c.RemotePeer().String(),
				"direction": c.Stat().Direction.String()})
		},
		DisconnectedF: func(net network.Network, c network.Conn) {
			if net.Connectedness(c.RemotePeer()) != network.Connected {
				emit(map[string]any{"event": "disconnect", "peer_id": c.RemotePeer().String()})
			}
		},
	})
	sub, err := n.host.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		return err
	}
	go func() {
		for ev := range sub.Out() {
			e := ev.(event.EvtPeerIdentificationCompleted)
			// v0.9's event names only the peer: what identify learnt is in the peer store.
			protocols, _ := n.host.Peerstore().GetProtocols(e.Peer)
			emit(map[string]any{
				"event":              "identify",
				"peer_id":            e.Peer.String(),
				"protocols":          sortedStrings(protocols),
				"listen_addrs":       addrStrings(n.host.Peerstore().Addrs(e.Peer)),
				"signed_peer_record": n.peerRecord(e.Peer) != nil,
			})
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

// peerRecord: the signed peer record identify accepted for p (go-libp2p verified the envelope
// and its peer id before storing it), or nil.
func (n *node) peerRecord(p peer.ID) map[string]any {
	cab, ok := peerstore.GetCertifiedAddrBook(n.host.Peerstore())
	if !ok {
		return nil
	}
	env := cab.GetPeerRecord(p)
	if env == nil {
		return nil
	}
	rec, err := env.Record()
	if err != nil {
		return nil
	}
	pr, ok := rec.(*peer.PeerRecord)
	if !ok {
		return nil
	}
	return map[string]any{"peer_id": pr.PeerID.String(), "addrs": addrStrings(pr.Addrs), "seq": fmt.Sprint(pr.Seq)}
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

func (a args) timeout() time.Duration {
	return time.Duration(a.num("timeout_ms", defaultTimeoutMS)) * time.Millisecond
}

func sortedStrings(in []string) []string {
	out := append([]string{}, in...)
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
		return c, nil
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
		return nil, errors.New("kad is disabled (--no-kad)")
	}
	return n.dht, nil
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

// ----------------------------------------------------------------- commands --

type command func(ctx context.Context, a args) (map[string]any, error)

func (n *node) commands() map[string]command {
	return map[string]command{
		"dial":          n.cmdDial,
		"ping":          n.cmdPing,
		"identify":      n.cmdIdentify,
		"peerstore":     n.cmdPeerstore,
		"peers":         n.cmdPeers,
		"hangup":        n.cmdHangup,
		"ping_stats":    n.cmdPingStats,
		"find_peer":     n.cmdFindPeer,
		"closest_peers": n.cmdClosestPeers,
		"routing_table": n.cmdRoutingTable,
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
	security, muxer := n.seen.get(info.ID)
	reply := map[string]any{"peer_id": info.ID.String(), "encryption": security, "multiplexer": muxer}
	if conns := n.host.Network().ConnsToPeer(info.ID); len(conns) > 0 {
		reply["remote_addr"] = conns[0].RemoteMultiaddr().String()
	}
	return reply, nil
}

// cmdPing pings "count" times on ONE stream (go-libp2p's ping client keeps its stream).
func (n *node) cmdPing(ctx context.Context, a args) (map[string]any, error) {
	id, err := n.target(ctx, a.str("peer"))
	if err != nil {
		return nil, err
	}
	count := a.num("count", 1)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := ping.Ping(pctx, n.host, id)
	ms := make([]float64, 0, count)
	for len(ms) < count {
		select {
		case res, ok := <-results:
			if !ok {
				return nil, fmt.Errorf("ping ended after %d of %d: %w", len(ms), count, ctx.Err())
			}
			if res.Error != nil {
				return nil, res.Error
			}
			ms = append(ms, float64(res.RTT.Microseconds())/1000)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return map[string]any{"rtts_ms": ms, "streams": 1}, nil
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
	p := conn.RemotePeer()
	ps := n.host.Peerstore()
	protocols, err := ps.GetProtocols(p)
	if err != nil {
		return nil, err
	}
	reply := map[string]any{
		"source":             "identify",
		"peer_id":            p.String(),
		"protocols":          sortedStrings(protocols),
		"listen_addrs":       addrStrings(ps.Addrs(p)),
		"public_key_b64":     n.publicKeyB64(p),
		"signed_peer_record": n.peerRecord(p),
	}
	for key, field := range map[string]string{"AgentVersion": "agent_version", "ProtocolVersion": "protocol_version"} {
		if v, err := ps.Get(p, key); err == nil {
			reply[field] = v
		}
	}
	return reply, nil
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
	return map[string]any{
		"peer_id":        id.String(),
		"protocols":      sortedStrings(protocols),
		"addrs":          addrStrings(ps.Addrs(id)),
		"public_key_b64": n.publicKeyB64(id),
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

func (n *node) cmdFindPeer(ctx context.Context, a args) (map[string]any, error) {
	d, err := n.needDHT()
	if err != nil {
		return nil, err
	}
	id, err := peerIDOf(a.str("peer"))
	if err != nil {
		return nil, err
	}
	// "from": the first peer whose FIND_NODE answer named the target.
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
	id, err := peerIDOf(a.str("key_peer"))
	if err != nil {
		return nil, err
	}
	found, err := d.GetClosestPeers(ctx, string(id))
	if err != nil {
		return nil, err
	}
	peers := []string{}
	for p := range found {
		peers = append(peers, p.String())
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return map[string]any{"peers": peers}, nil
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

// -------------------------------------------------------------------- main --

func main() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts, err := parseArgs(os.Args[1:])
	var n *node
	if err == nil {
		n, err = makeNode(ctx, opts)
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

	// PhysarumSM's nodes dial their bootstraps before they start serving.
	for _, text := range opts.bootstraps {
		addr, err := localMultiaddr(text)
		var info *peer.AddrInfo
		if err == nil {
			info, err = peer.AddrInfoFromP2pAddr(addr)
		}
		if err == nil {
			bctx, bcancel := context.WithTimeout(ctx, defaultTimeoutMS*time.Millisecond)
			err = n.host.Connect(bctx, *info)
			bcancel()
		}
		if err != nil {
			logger("bootstrap %s failed: %v", text, err)
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

	emit(map[string]any{
		"event":    "ready",
		"peer_id":  n.host.ID().String(),
		"addrs":    n.fullAddrs(),
		"kad":      n.dht != nil,
		"pnet":     opts.psk != nil || opts.pskFile != "",
		"key_type": opts.keyType,
		"security": []string{secio.ID, libp2ptls.ID},
		"muxers":   []string{yamuxID, mplexID},
		"versions": moduleVersions(),
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

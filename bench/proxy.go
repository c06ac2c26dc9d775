package bench

import (
	"errors"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// DelayProxy forwards TCP connections from a loopback port to a server,
// holding every chunk of data for a fixed delay in each direction: a
// network with a round trip of twice the delay and the bandwidth of
// loopback. The chunks are delayed, not the connection, so a stream of
// data keeps its rate and pays the delay once, while every round trip
// between client and server pays it twice. That is the price the
// cursor mode's FETCHes pay on a real network.
type DelayProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	// wg counts the goroutines of the accept loop and of every forwarded
	// connection; Close waits for them.
	wg sync.WaitGroup
	// mu guards conns, the open connections of both sides, so that Close
	// can end them.
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// chunkBuffers recycles the read buffers of the proxies: a million
// documents through a proxy would otherwise allocate their size again.
var chunkBuffers = sync.Pool{New: func() any { return new([32 << 10]byte) }}

// inFlight bounds the chunks held back per direction: enough for the
// delay times loopback's bandwidth, with room to spare.
const inFlight = 4096

// StartDelayProxy listens on 127.0.0.1 and forwards each connection to
// target (host:port) with delay each way.
func StartDelayProxy(target string, delay time.Duration) (*DelayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &DelayProxy{ln: ln, target: target, delay: delay, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	// Accepts until Close closes the listener.
	go p.accept()
	return p, nil
}

// Addr returns the host:port clients connect to.
func (p *DelayProxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting, ends every forwarded connection and waits for
// the proxy's goroutines.
func (p *DelayProxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}

// track registers c to be closed by Close; false if Close came first.
func (p *DelayProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *DelayProxy) untrack(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		delete(p.conns, c)
	}
}

func (p *DelayProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		// Forwards this connection until either side ends it.
		go p.forward(client)
	}
}

func (p *DelayProxy) forward(client net.Conn) {
	defer p.wg.Done()
	if !p.track(client) {
		_ = client.Close()
		return
	}
	server, err := net.Dial("tcp", p.target)
	if err != nil || !p.track(server) {
		if server != nil {
			_ = server.Close()
		}
		_ = client.Close()
		p.untrack(client)
		return
	}
	var pair sync.WaitGroup
	pair.Add(2)
	// One pipe per direction; each ends when its reader sees the end of
	// its side, and the first to fail a write ends both sides.
	go func() { defer pair.Done(); p.pipe(server, client) }()
	go func() { defer pair.Done(); p.pipe(client, server) }()
	pair.Wait()
	_ = client.Close()
	_ = server.Close()
	p.untrack(client, server)
}

type chunk struct {
	buf *[32 << 10]byte
	n   int
	due time.Time
}

// pipe copies src to dst, each chunk written delay after it was read. It
// returns once src has ended and what it sent is written (or dst failed).
func (p *DelayProxy) pipe(dst, src net.Conn) {
	chunks := make(chan chunk, inFlight)
	done := make(chan struct{})
	// The writer: releases each chunk when due. After a failed write it
	// closes both sides, which ends the reader, and discards the rest.
	go func() {
		defer close(done)
		failed := false
		for c := range chunks {
			if !failed {
				if wait := time.Until(c.due); wait > 0 {
					time.Sleep(wait)
				}
				if _, err := dst.Write(c.buf[:c.n]); err != nil {
					failed = true
					_ = dst.Close()
					_ = src.Close()
				}
			}
			chunkBuffers.Put(c.buf)
		}
		if !failed {
			// The end of src travels on as a half close, after its data,
			// as it would through a network.
			if tc, ok := dst.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			} else {
				_ = dst.Close()
			}
		}
	}()
	for {
		buf := chunkBuffers.Get().(*[32 << 10]byte)
		n, err := src.Read(buf[:])
		if n > 0 {
			chunks <- chunk{buf: buf, n: n, due: time.Now().Add(p.delay)}
		} else {
			chunkBuffers.Put(buf)
		}
		if err != nil {
			break
		}
	}
	close(chunks)
	<-done
}

// ServerAddr returns the host:port of the server a lib/pq DSN names, the
// target for a DelayProxy.
func ServerAddr(dsn string) (string, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(cfg.Host, "/") {
		return "", errors.New("bench: the delay proxy needs a TCP server, not the socket " + cfg.Host)
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), nil
}

// WithAddr returns dsn, in key=value or URL form, pointed at addr
// (host:port) instead of its server.
func WithAddr(dsn, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		u.Host = addr
		q := u.Query()
		// A host in the query string would win over the one in the URL.
		q.Del("host")
		q.Del("port")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// In a key=value DSN the last of a repeated key wins, for lib/pq and
	// pgx alike.
	return dsn + " host=" + host + " port=" + port, nil
}

var _ io.Closer = (*DelayProxy)(nil)

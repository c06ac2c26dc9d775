package jsonstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/jsonstream/jsonstream/internal/pgtest"
)

// tlsFront stands before the test server as PostgreSQL's own TLS would:
// it answers an SSLRequest with 'S' and a handshake with its own
// certificate (or 'N' when it has none: a server with ssl=off), takes a
// direct TLS handshake (sslnegotiation=direct, as PostgreSQL 17 does),
// and passes the plaintext on to the server. It gives the TLS situations
// the test server cannot: an expired certificate, no TLS at all.
//
// Two other behaviours stand for what sits between a client and a server:
// passthrough hands every byte to the server untouched (the server's own
// TLS answers), and silent never answers an SSLRequest (a middlebox that
// speaks only plaintext). Every front records the code of each
// connection's first request (SSLRequest, StartupMessage, CancelRequest).
type tlsFront struct {
	ln                  net.Listener
	backend             string
	conf                *tls.Config
	passthrough, silent bool
	stalled             bool
	wg                  sync.WaitGroup
	mu                  sync.Mutex
	conns               map[net.Conn]bool
	codes               []uint32
}

// firstCodes returns the codes of the connections' first requests so far.
func (f *tlsFront) firstCodes() []uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.codes)
}

// Options of newTLSFront.
var (
	passthrough = func(f *tlsFront) { f.passthrough = true }
	silent      = func(f *tlsFront) { f.silent = true }
	// stalled answers an SSLRequest with 'S', then never answers the
	// handshake.
	stalled = func(f *tlsFront) { f.stalled = true }
)

func newTLSFront(t *testing.T, conf *tls.Config, opts ...func(*tlsFront)) *tlsFront {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	f := &tlsFront{ln: ln, backend: net.JoinHostPort("127.0.0.1", strconv.Itoa(pgtest.Shared(t).Port())),
		conf: conf, conns: map[net.Conn]bool{}}
	for _, o := range opts {
		o(f)
	}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			_ = c.Close()
		}
		f.mu.Unlock()
		f.wg.Wait()
	})
	return f
}

func (f *tlsFront) port() string { return strconv.Itoa(f.ln.Addr().(*net.TCPAddr).Port) }

func (f *tlsFront) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c] = true
	return true
}

func (f *tlsFront) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			f.mu.Lock()
			for c := range f.conns {
				_ = c.Close()
			}
			f.conns = nil
			f.mu.Unlock()
			return
		}
		if !f.track(c) {
			_ = c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer c.Close()
			f.handle(c)
		}()
	}
}

// prefixed replays bytes already read before the connection's own.
type prefixed struct {
	net.Conn
	head []byte
}

func (p *prefixed) Read(b []byte) (int, error) {
	if len(p.head) > 0 {
		n := copy(b, p.head)
		p.head = p.head[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

func (f *tlsFront) handle(c net.Conn) {
	var first [8]byte
	if _, err := io.ReadFull(c, first[:1]); err != nil {
		return
	}
	client := net.Conn(c)
	switch first[0] {
	case 0x16: // a TLS ClientHello: direct negotiation
		if f.conf == nil {
			return
		}
		client = tls.Server(&prefixed{Conn: c, head: first[:1]}, f.conf)
	default:
		if _, err := io.ReadFull(c, first[1:]); err != nil {
			return
		}
		f.mu.Lock()
		f.codes = append(f.codes, binary.BigEndian.Uint32(first[4:]))
		f.mu.Unlock()
		isSSLRequest := binary.BigEndian.Uint32(first[:]) == 8 && binary.BigEndian.Uint32(first[4:]) == sslRequestCode
		switch {
		case f.passthrough:
			client = &prefixed{Conn: c, head: first[:]}
		case isSSLRequest && f.silent:
			_, _ = io.Copy(io.Discard, c)
			return
		case isSSLRequest && f.stalled:
			if _, err := c.Write([]byte{'S'}); err == nil {
				_, _ = io.Copy(io.Discard, c)
			}
			return
		case isSSLRequest && f.conf == nil:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
		case isSSLRequest:
			if _, err := c.Write([]byte{'S'}); err != nil {
				return
			}
			client = tls.Server(c, f.conf)
		default:
			client = &prefixed{Conn: c, head: first[:]}
		}
	}
	if tc, ok := client.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			return
		}
	}
	server, err := net.Dial("tcp", f.backend)
	if err != nil {
		return
	}
	if !f.track(server) {
		_ = server.Close()
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
		done <- struct{}{}
	}
	go pipe(server, client)
	go pipe(client, server)
	<-done
	<-done
}

// tlsClass is the class of a connection attempt's outcome: "ok" and the
// server's view of the TLS in use, or the kind of error.
func tlsClass(err error) string {
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var pqErr *pq.Error
	var alert tls.AlertError
	var recordHeader tls.RecordHeaderError
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &unknown):
		return "x509: unknown authority"
	case errors.As(err, &hostname):
		return "x509: host name"
	case errors.As(err, &invalid):
		return fmt.Sprintf("x509: invalid (%d)", invalid.Reason)
	case errors.Is(err, pq.ErrSSLKeyHasWorldPermissions):
		return "key file permissions"
	case errors.Is(err, pq.ErrSSLNotSupported):
		return "server without TLS"
	case errors.As(err, &pqErr):
		return "server: " + string(pqErr.Code)
	case errors.As(err, &alert), strings.Contains(err.Error(), "remote error: tls"):
		return "TLS alert from the server"
	case errors.As(err, &recordHeader):
		return "not TLS"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		strings.Contains(err.Error(), "connection reset"), strings.Contains(err.Error(), "broken pipe"):
		return "connection closed"
	case strings.HasPrefix(err.Error(), "pq: "):
		return "pq: configuration"
	}
	return fmt.Sprintf("other %T", err)
}

// tlsOutcome connects through driverName with dsn and reports the class
// of the outcome and, when connected, the server's view of the TLS
// (pg_stat_ssl) and whether jsonstream's framer follows the connection.
type tlsOutcome struct {
	Class   string
	SSL     bool
	Version string
	Framed  bool
}

func connectTLS(t *testing.T, driverName, dsn string) (tlsOutcome, error) {
	t.Helper()
	db, err := sql.Open(driverName, dsn)
	require.NoError(t, err)
	defer db.Close()
	return connectDB(t, db)
}

// connectDB is connectTLS on a pool already open.
func connectDB(t *testing.T, db *sql.DB) (tlsOutcome, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sc, err := db.Conn(ctx)
	if err != nil {
		return tlsOutcome{Class: tlsClass(err)}, err
	}
	defer sc.Close()
	o := tlsOutcome{Class: "ok"}
	var version sql.NullString
	require.NoError(t, sc.QueryRowContext(ctx,
		"SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&o.SSL, &version))
	o.Version = version.String
	require.NoError(t, sc.Raw(func(dc any) error {
		if c, ok := dc.(*conn); ok && c.sock != nil {
			o.Framed = c.sock.frames.following()
		}
		return nil
	}))
	return o, nil
}

// TestTLSMatrix: jsonstream's dialer negotiates TLS as lib/pq does. Every
// sslmode × sslnegotiation × certificate situation connects through lib/pq
// alone and through jsonstream with the same outcome: connected with the
// same TLS as the server sees it, or refused with the same class of error.
// Where jsonstream negotiated, the framer follows the connection; no
// password appears in any error.
func TestTLSMatrix(t *testing.T) {
	s := pgtest.Shared(t)
	port := strconv.Itoa(s.Port())
	otherCA := newTestCA(t, "other")
	frontCA := newTestCA(t, "front")
	cert, key := s.ClientCert()
	expired := newTLSFront(t, &tls.Config{Certificates: []tls.Certificate{
		frontCA.serverCert(t, time.Now().Add(-24*time.Hour))}})
	valid := newTLSFront(t, &tls.Config{Certificates: []tls.Certificate{
		frontCA.serverCert(t, time.Now().Add(24*time.Hour))}})
	clientRequired := newTLSFront(t, &tls.Config{
		Certificates: []tls.Certificate{frontCA.serverCert(t, time.Now().Add(24*time.Hour))},
		ClientAuth:   tls.RequireAnyClientCert,
	})
	noTLS := newTLSFront(t, nil)
	// The client key, readable by others: lib/pq refuses it.
	keyBytes, err := os.ReadFile(key)
	require.NoError(t, err)
	openKey := filepath.Join(t.TempDir(), "open.key")
	require.NoError(t, os.WriteFile(openKey, keyBytes, 0o600))
	require.NoError(t, os.Chmod(openKey, 0o644))
	caPEM, err := os.ReadFile(s.CAFile())
	require.NoError(t, err)
	certPEM, err := os.ReadFile(cert)
	require.NoError(t, err)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedPort := strconv.Itoa(closed.Addr().(*net.TCPAddr).Port)
	require.NoError(t, closed.Close())
	const password, passphrase = "s3cret-in-the-dsn", "key-passphrase-in-the-dsn"
	base := "dbname=postgres password=" + password + " "
	situations := map[string]string{
		"valid":                              base + "host=localhost port=" + port + " user=postgres sslrootcert=" + s.CAFile(),
		"no root certificate":                base + "host=localhost port=" + port + " user=postgres",
		"wrong CA":                           base + "host=localhost port=" + port + " user=postgres sslrootcert=" + otherCA.pemFile,
		"wrong host name":                    base + "host=wrong.invalid hostaddr=127.0.0.1 port=" + port + " user=postgres sslrootcert=" + s.CAFile(),
		"client certificate":                 base + "host=localhost port=" + port + " user=" + pgtest.CertUser + " sslrootcert=" + s.CAFile() + " sslcert=" + cert + " sslkey=" + key,
		"client certificate missing":         base + "host=localhost port=" + port + " user=" + pgtest.CertUser + " sslrootcert=" + s.CAFile(),
		"front valid":                        base + "host=localhost port=" + valid.port() + " user=postgres sslrootcert=" + frontCA.pemFile,
		"expired":                            base + "host=localhost port=" + expired.port() + " user=postgres sslrootcert=" + frontCA.pemFile,
		"client certificate required, none":  base + "host=localhost port=" + clientRequired.port() + " user=postgres sslrootcert=" + frontCA.pemFile,
		"client certificate required, given": base + "host=localhost port=" + clientRequired.port() + " user=postgres sslrootcert=" + frontCA.pemFile + " sslcert=" + cert + " sslkey=" + key,
		"client key readable by others":      base + "host=localhost port=" + port + " user=" + pgtest.CertUser + " sslrootcert=" + s.CAFile() + " sslcert=" + cert + " sslkey=" + openKey,
		"inline certificates": base + "host=localhost port=" + port + " user=" + pgtest.CertUser + " sslinline=true sslrootcert='" + string(caPEM) +
			"' sslcert='" + string(certPEM) + "' sslkey='" + string(keyBytes) + "'",
		"inline root certificate": base + "host=localhost port=" + port + " user=postgres sslinline=true sslrootcert='" + string(caPEM) + "'",
		"TLS 1.2 at most":         base + "host=localhost port=" + port + " user=postgres sslrootcert=" + s.CAFile() + " ssl_max_protocol_version=TLSv1.2",
		"second of two hosts":     base + "host=127.0.0.1,localhost port=" + closedPort + "," + port + " user=postgres sslrootcert=" + s.CAFile(),
		"two names, one address":  base + "host=localhost,wrong.invalid hostaddr=127.0.0.1,127.0.0.1 port=" + port + " user=postgres sslrootcert=" + s.CAFile(),
		// lib/pq takes no key passphrase: it sends sslpassword to the
		// server as a setting, which refuses it.
		"key passphrase":     base + "host=localhost port=" + port + " user=postgres sslrootcert=" + s.CAFile() + " sslpassword=" + passphrase,
		"system roots":       base + "host=localhost port=" + port + " user=postgres sslrootcert=system",
		"server without TLS": base + "host=localhost port=" + noTLS.port() + " user=postgres",
	}
	// A tls.Config registered with lib/pq stays lib/pq's (tls.go).
	require.NoError(t, pq.RegisterTLSConfig("jsonstream-matrix", &tls.Config{InsecureSkipVerify: true}))
	t.Cleanup(func() { _ = pq.RegisterTLSConfig("jsonstream-matrix", nil) })
	modes := []string{"", "sslmode=disable", "sslmode=allow", "sslmode=prefer", "sslmode=require",
		"sslmode=verify-ca", "sslmode=verify-full", "sslmode=pqgo-jsonstream-matrix",
		"sslmode=prefer connect_timeout=10", "sslmode=verify-full connect_timeout=10"}
	negotiations := []string{"", "sslnegotiation=direct"}
	if testing.Short() {
		// -short: lib/pq's negotiation and the plain sslmodes; the full
		// matrix runs without -short, as CI runs it.
		negotiations, modes = negotiations[:1], modes[:8]
	}
	seen := map[string]bool{}
	for name, dsn := range situations {
		for _, mode := range modes {
			for _, neg := range negotiations {
				full := dsn + " " + mode + " " + neg
				t.Run(name+"/"+mode+"/"+neg, func(t *testing.T) {
					want, _ := connectTLS(t, "postgres", full)
					got, err := connectTLS(t, DriverName, full)
					// lib/pq keeps its own TLS for pqgo-… (which always
					// negotiates) and for sslmode=allow's second attempt,
					// and there the framer sees ciphertext. With prefer and
					// connect_timeout lib/pq negotiates too, and the framer
					// follows only a fallback to plaintext, which a front's
					// plaintext to the server hides: not checked there.
					pqgo := strings.HasPrefix(mode, "sslmode=pqgo-") ||
						name == "two names, one address" && mode != "sslmode=disable" && mode != "sslmode=allow"
					want.Framed = want.Class == "ok" && !pqgo && (mode != "sslmode=allow" || !want.SSL)
					if mode == "sslmode=prefer connect_timeout=10" {
						want.Framed = got.Framed
						assert.False(t, got.Framed && got.SSL, "the framer followed ciphertext")
					}
					assert.Equal(t, want, got, "lib/pq and jsonstream differ")
					if err != nil {
						assert.NotContains(t, err.Error(), password)
						assert.NotContains(t, err.Error(), passphrase)
					}
					seen[want.Class] = true
				})
			}
		}
	}
	// The matrix reaches every outcome it claims to compare.
	if testing.Short() {
		return
	}
	for _, class := range []string{"ok", "x509: unknown authority", "key file permissions", "x509: host name",
		fmt.Sprintf("x509: invalid (%d)", x509.Expired), "server without TLS", "server: 28000", "server: 42704", "TLS alert from the server", "pq: configuration"} {
		assert.True(t, seen[class], "no situation ended %q", class)
	}
}

// TestNewConnectorConfig: a pq.Config built by the caller gets the same
// TLS and framing as a DSN through sql.Open, and the options are checked.
func TestNewConnectorConfig(t *testing.T) {
	cfg, err := pq.NewConfig(pgtest.Shared(t).DSNAs("user=postgres sslmode=require"))
	require.NoError(t, err)
	c, err := NewConnectorConfig(cfg, WithFetchSize(FetchAuto))
	require.NoError(t, err)
	require.NotNil(t, c.tls, "jsonstream's dialer negotiates")
	db := sql.OpenDB(c)
	defer db.Close()
	sc, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer sc.Close()
	var ssl bool
	require.NoError(t, sc.QueryRowContext(context.Background(),
		"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl))
	assert.True(t, ssl)
	require.NoError(t, sc.Raw(func(dc any) error {
		assert.True(t, dc.(*conn).sock.frames.following(), "the framer follows the TLS connection")
		assert.True(t, dc.(*conn).sock.encrypted())
		return nil
	}))

	_, err = NewConnectorConfig(cfg, WithFetchSize(-2))
	assert.ErrorIs(t, err, ErrInvalidOption)

	// The DSN's jsonstream_ parameters, which pq.NewConfig keeps for the
	// server, are jsonstream's: the server would refuse them.
	withOurs, err := pq.NewConfig(pgtest.Shared(t).DSNAs("user=postgres sslmode=disable jsonstream_close=drain"))
	require.NoError(t, err)
	c, err = NewConnectorConfig(withOurs)
	require.NoError(t, err)
	ours := sql.OpenDB(c)
	defer ours.Close()
	require.NoError(t, ours.Ping())
	assert.Equal(t, CloseDrain, c.settings.closeMode)
}

// TestLateTLSConfig: a DSN lib/pq cannot read at sql.Open (an sslmode
// naming a tls.Config not registered yet) fails each connection with
// lib/pq's error, and is read again for the next, as lib/pq reads it:
// once the config is registered, jsonstream connects as lib/pq does.
func TestLateTLSConfig(t *testing.T) {
	dsn := pgtest.Shared(t).DSNAs("user=postgres sslmode=pqgo-jsonstream-late")
	pqDB := openDSN(t, "postgres", dsn)
	jsDB := openDSN(t, DriverName, dsn)
	pqErr := pqDB.Ping()
	require.Error(t, pqErr)
	jsErr := jsDB.Ping()
	require.Error(t, jsErr)
	assert.Equal(t, pqErr.Error(), jsErr.Error())
	require.NoError(t, pq.RegisterTLSConfig("jsonstream-late", &tls.Config{InsecureSkipVerify: true}))
	t.Cleanup(func() { _ = pq.RegisterTLSConfig("jsonstream-late", nil) })
	for name, db := range map[string]*sql.DB{"lib/pq": pqDB, "jsonstream": jsDB} {
		var ssl bool
		require.NoError(t, db.QueryRow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl), name)
		assert.True(t, ssl, name)
	}
}

// TestTLSServerNameAndEnvironment: the server name sent (sslsni, on by
// default) and the settings read from PG* environment variables are
// lib/pq's, through jsonstream's dialer as through lib/pq alone.
func TestTLSServerNameAndEnvironment(t *testing.T) {
	ca := newTestCA(t, "sni")
	var mu sync.Mutex
	var names []string
	conf := &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, time.Now().Add(time.Hour))}}
	front := newTLSFront(t, &tls.Config{GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		mu.Lock()
		names = append(names, hello.ServerName)
		mu.Unlock()
		return conf, nil
	}})
	sent := func(driverName, dsn string) (string, string) {
		mu.Lock()
		names = nil
		mu.Unlock()
		o, _ := connectTLS(t, driverName, dsn)
		mu.Lock()
		defer mu.Unlock()
		return o.Class, strings.Join(names, ",")
	}
	base := "host=localhost port=" + front.port() + " user=postgres dbname=postgres sslmode=require "
	for _, extra := range []string{"", "sslsni=1", "sslsni=0"} {
		wantClass, wantName := sent("postgres", base+extra)
		gotClass, gotName := sent(DriverName, base+extra)
		assert.Equal(t, "ok", wantClass)
		assert.Equal(t, wantClass, gotClass, extra)
		assert.Equal(t, wantName, gotName, "server name sent, %q", extra)
	}
	_, withSNI := sent(DriverName, base)
	assert.Equal(t, "localhost", withSNI)

	// PGSSLMODE and PGSSLROOTCERT from the environment, read by lib/pq's
	// parser for both.
	t.Setenv("PGSSLMODE", "verify-full")
	t.Setenv("PGSSLROOTCERT", ca.pemFile)
	dsn := "host=localhost port=" + front.port() + " user=postgres dbname=postgres"
	want, _ := connectTLS(t, "postgres", dsn)
	got, _ := connectTLS(t, DriverName, dsn)
	assert.Equal(t, "ok", want.Class)
	assert.True(t, got.Framed, "jsonstream negotiated")
	want.Framed = true
	assert.Equal(t, want, got)
	t.Setenv("PGSSLROOTCERT", pgtest.Shared(t).CAFile()) // the wrong CA for the front
	want, _ = connectTLS(t, "postgres", dsn)
	got, err := connectTLS(t, DriverName, dsn)
	assert.Equal(t, "x509: unknown authority", want.Class)
	assert.Equal(t, want, got, "%v", err)
}

// TestTLSOnEveryConnection: lib/pq's cancel request goes over TLS through
// jsonstream's dialer as through lib/pq alone (it carries the session's
// secret key), and a dialer installed on the connector Unwrap returns
// never sends jsonstream's connections unencrypted.
func TestTLSOnEveryConnection(t *testing.T) {
	const sslRequest, startup, cancelRequest = sslRequestCode, 196608, 80877102
	for _, driverName := range []string{"postgres", DriverName} {
		t.Run("cancel/"+driverName, func(t *testing.T) {
			front := newTLSFront(t, nil, passthrough)
			db, err := sql.Open(driverName, "host=127.0.0.1 port="+front.port()+" user=postgres dbname=postgres sslmode=require")
			require.NoError(t, err)
			defer db.Close()
			db.SetMaxOpenConns(1)
			require.NoError(t, db.Ping())
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			// Exec keeps its context with lib/pq, whose cancel request
			// stops the statement.
			_, err = db.ExecContext(ctx, "SELECT pg_sleep(5)")
			require.Error(t, err)
			require.Eventually(t, func() bool { return len(front.firstCodes()) >= 2 }, 10*time.Second, 5*time.Millisecond,
				"no cancel request came")
			assert.Equal(t, []uint32{sslRequest, sslRequest}, front.firstCodes()[:2],
				"the login, then the cancel request, each after an SSLRequest")
			assert.NotContains(t, front.firstCodes(), uint32(cancelRequest), "a cancel request went unencrypted")
		})
	}
	t.Run("dialer replaced", func(t *testing.T) {
		front := newTLSFront(t, nil, passthrough)
		cfg, err := pq.NewConfig("host=127.0.0.1 port=" + front.port() + " user=postgres dbname=postgres sslmode=require")
		require.NoError(t, err)
		c, err := NewConnectorConfig(cfg)
		require.NoError(t, err)
		c.Unwrap().(*pq.Connector).Dialer(netDialer{})
		db := sql.OpenDB(c)
		defer db.Close()
		o, err := connectDB(t, db)
		require.NoError(t, err)
		assert.True(t, o.SSL)
		assert.True(t, o.Framed)
		assert.Equal(t, []uint32{sslRequest}, front.firstCodes(), "a login went unencrypted")
	})
}

// TestTLSConnectTimeoutError: connect_timeout ends a negotiation that a
// server stalls (no answer to the SSLRequest, or no handshake after 'S')
// with the error lib/pq gives: the socket's timeout, a *net.OpError, not
// the context's.
func TestTLSConnectTimeoutError(t *testing.T) {
	for name, opt := range map[string]func(*tlsFront){"no answer": silent, "no handshake": stalled} {
		front := newTLSFront(t, nil, opt)
		dsn := "host=127.0.0.1 port=" + front.port() + " user=postgres dbname=postgres sslmode=require connect_timeout=1"
		for _, driverName := range []string{"postgres", DriverName} {
			t.Run(name+"/"+driverName, func(t *testing.T) {
				_, err := connectTLS(t, driverName, dsn)
				var opErr *net.OpError
				require.ErrorAs(t, err, &opErr)
				assert.True(t, opErr.Timeout(), "%v", err)
				assert.NotErrorIs(t, err, context.DeadlineExceeded)
			})
		}
	}
}

// TestPreferWithConnectTimeout: sslmode=prefer with connect_timeout, before
// a server that never answers the SSLRequest, falls back to plaintext on a
// fresh connect_timeout as lib/pq does (jsonstream leaves that setting to
// lib/pq's TLS: its dialer cannot give the fallback a new deadline).
func TestPreferWithConnectTimeout(t *testing.T) {
	front := newTLSFront(t, nil, silent)
	dsn := "host=127.0.0.1 port=" + front.port() + " user=postgres dbname=postgres sslmode=prefer connect_timeout=1"
	for _, driverName := range []string{"postgres", DriverName} {
		t.Run(driverName, func(t *testing.T) {
			o, err := connectTLS(t, driverName, dsn)
			require.NoError(t, err)
			assert.False(t, o.SSL)
		})
	}
}

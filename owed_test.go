package jsonstream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClientSyncs: recover tells from what was written after an owed end
// where the server's skipping ended: at no Sync, at a Sync that ends the
// write, or somewhere it cannot send again as it was.
func TestClientSyncs(t *testing.T) {
	w := &wire{}
	msgs := func(build func()) []byte {
		w.out = w.out[:0]
		build()
		return append([]byte(nil), w.out...)
	}
	simple := msgs(func() { at := w.begin('Q'); w.cstring("SELECT 1"); w.end(at) })
	portal := msgs(func() { w.parse("SELECT 1"); w.bind("", nil, nil); w.describe('P'); w.execute(16); w.flush() })
	extended := msgs(func() { w.parse("SELECT $1"); w.describe('S'); w.sync() })
	twice := append(append([]byte(nil), extended...), extended...)
	after := append(append([]byte(nil), extended...), simple...)
	for _, c := range []struct {
		name string
		b    []byte
		n    int
		last bool
	}{
		{"nothing", nil, 0, false},
		{"simple Query", simple, 0, false},
		{"portal", portal, 0, false},
		{"extended, ending with Sync", extended, 1, true},
		{"two Syncs", twice, 2, true},
		{"a message after the Sync", after, 1, false},
		{"cut short", extended[:len(extended)-2], 0, false},
	} {
		n, last := clientSyncs(c.b)
		assert.Equal(t, c.n, n, c.name)
		assert.Equal(t, c.last, last, c.name)
	}
}

// TestSockQuietTLS: through TLS, quiet looks at the socket beneath and at
// what the TLS connection holds of what it read before, and keeps what
// it reads for the next read.
func TestSockQuietTLS(t *testing.T) {
	client, raw, srv := tlsOver(t, nil)
	s := &sock{Conn: client, raw: raw}
	var err error

	assert.True(t, s.quiet(), "nothing sent")

	// Two records: the first read takes both off the socket and returns
	// one byte; the rest waits in the TLS connection, not the socket.
	_, err = srv.Write([]byte("ab"))
	require.NoError(t, err)
	_, err = srv.Write([]byte("cd"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !s.rawQuiet() }, 5*time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond) // the second record arrives too
	one := make([]byte, 1)
	n, err := client.Read(one)
	require.NoError(t, err)
	require.Equal(t, "a", string(one[:n]))
	require.True(t, s.rawQuiet(), "the first read took both records off the socket")
	assert.False(t, s.quiet(), "what the TLS connection holds")
	got := make([]byte, 8)
	n, err = s.read(got)
	require.NoError(t, err)
	assert.Equal(t, "b", string(got[:n]), "kept for the next read")
	// The socket is still usable: no deadline left behind.
	n, err = s.read(got)
	require.NoError(t, err)
	assert.Equal(t, "cd", string(got[:n]))
	assert.True(t, s.quiet())

	// Bytes in the socket not yet read.
	_, err = srv.Write([]byte("ef"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !s.quiet() }, 5*time.Second, time.Millisecond)
}

// tlsOver connects a TLS client to a TLS server on loopback and returns the
// client, the socket beneath it and the server's side. With fs, the client
// runs over fs, whose Conn is set to the socket.
func tlsOver(t *testing.T, fs *fakeSock) (client *tls.Conn, raw net.Conn, srv *tls.Conn) {
	t.Helper()
	ca := newTestCA(t, "quiet-ca")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	served := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(served)
			return
		}
		srv := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{ca.serverCert(t, time.Now().Add(time.Hour))}})
		_ = srv.Handshake()
		served <- srv
	}()
	raw, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { _ = raw.Close() })
	if fs != nil {
		fs.Conn = raw
		raw = fs
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	client = tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	require.NoError(t, client.Handshake())
	srv = <-served
	require.NotNil(t, srv)
	t.Cleanup(func() { _ = srv.Close() })
	return client, raw, srv
}

// TestSockQuietTLSDeadlines: quiet's look through TLS sets a deadline in
// the past and clears it. When setting it fails, nothing is read and the
// socket counts as not quiet (Close then reads its end); when clearing it
// fails, the deadline counts as armed, so that the end's drain clears it
// again or cuts. A drain's deadline that the look replaced is set again
// by the drain's next read.
func TestSockQuietTLSDeadlines(t *testing.T) {
	t.Run("setting fails", func(t *testing.T) {
		fs := newFakeSock()
		client, raw, _ := tlsOver(t, fs)
		s := &sock{Conn: client, raw: raw}
		require.True(t, s.rawQuiet())
		reads := fs.reads.Load()
		fs.setOnDeadline(func(time.Time) error { return errors.New("refused") })
		assert.False(t, s.quiet())
		assert.Equal(t, reads, fs.reads.Load(), "nothing was read")
		assert.False(t, s.armed.Load())
	})
	t.Run("clearing fails", func(t *testing.T) {
		fs := newFakeSock()
		client, raw, _ := tlsOver(t, fs)
		s := &sock{Conn: client, raw: raw}
		fs.setOnDeadline(func(d time.Time) error {
			if d.IsZero() {
				return errors.New("refused")
			}
			return nil
		})
		assert.False(t, s.quiet())
		assert.True(t, s.armed.Load(), "the deadline counts as armed")
		assert.False(t, s.endDrain(), "clearing it fails again: the caller cuts")
		fs.setOnDeadline(nil)
		s.armed.Store(true)
		assert.True(t, s.endDrain())
		assert.True(t, fs.readDeadline().IsZero(), "cleared")
	})
	t.Run("a drain's deadline", func(t *testing.T) {
		fs := newFakeSock()
		client, raw, srv := tlsOver(t, fs)
		s := &sock{Conn: client, raw: raw}
		until := time.Now().Add(time.Hour)
		require.True(t, s.beginDrain(until))
		got := make([]byte, 8)
		_, err := srv.Write([]byte("a"))
		require.NoError(t, err)
		n, err := s.read(got)
		require.NoError(t, err)
		require.Equal(t, "a", string(got[:n]))
		require.True(t, fs.readDeadline().Equal(time.Unix(0, until.UnixNano())), "the drain's read set its deadline")
		require.True(t, s.quiet())
		require.True(t, fs.readDeadline().IsZero(), "the look cleared it")
		_, err = srv.Write([]byte("b"))
		require.NoError(t, err)
		n, err = s.read(got)
		require.NoError(t, err)
		require.Equal(t, "b", string(got[:n]))
		assert.True(t, fs.readDeadline().Equal(time.Unix(0, until.UnixNano())), "the drain's next read set it again")
		assert.True(t, s.endDrain())
	})
}

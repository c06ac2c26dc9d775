package jsonstream

import (
	"crypto/tls"
	"crypto/x509"
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
	portal := msgs(func() { w.parse("SELECT 1"); w.bind(nil, nil); w.describe('P'); w.execute(16); w.flush() })
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
	raw, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer raw.Close()
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	client := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	require.NoError(t, client.Handshake())
	srv := <-served
	require.NotNil(t, srv)
	defer srv.Close()
	s := &sock{Conn: client, raw: raw}

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

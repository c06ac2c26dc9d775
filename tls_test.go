package jsonstream

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mustConfig(t *testing.T, dsn string) pq.Config {
	t.Helper()
	cfg, err := pq.NewConfig(dsn)
	require.NoError(t, err)
	return cfg
}

// TestPlanTLS: which settings jsonstream's dialer negotiates itself, and
// what lib/pq is then told.
func TestPlanTLS(t *testing.T) {
	require.NoError(t, pq.RegisterTLSConfig("jsonstream-plan", &tls.Config{}))
	t.Cleanup(func() { _ = pq.RegisterTLSConfig("jsonstream-plan", nil) })
	for dsn, ours := range map[string]bool{
		"host=db user=u":                                       true, // lib/pq's default: require without fallback
		"host=db user=u sslmode=prefer":                        true,
		"host=db user=u sslmode=require":                       true,
		"host=db user=u sslmode=verify-ca":                     true,
		"host=db user=u sslmode=verify-full":                   true,
		"host=db user=u sslmode=require sslnegotiation=direct": true,
		"host=db user=u sslmode=disable":                       false,
		"host=db user=u sslmode=allow":                         false, // plaintext first, lib/pq's TLS after
		"host=db user=u sslmode=pqgo-jsonstream-plan":          false,
		"host=/tmp user=u sslmode=require":                     false, // a Unix socket: lib/pq disables TLS
		"host=a,b hostaddr=10.0.0.1,10.0.0.1 user=u":           false, // two names, one address
		"host=a,b hostaddr=10.0.0.1,10.0.0.2 user=u":           true,
	} {
		t.Run(dsn, func(t *testing.T) {
			cfg := mustConfig(t, dsn)
			inner, plan := planTLS(cfg)
			if !ours {
				assert.Nil(t, plan)
				assert.Equal(t, cfg, inner, "lib/pq keeps the settings as given")
				return
			}
			require.NotNil(t, plan)
			assert.Equal(t, pq.SSLModeDisable, inner.SSLMode, "lib/pq must not negotiate again")
			assert.Equal(t, pq.SSLNegotiationPostgres, inner.SSLNegotiation)
			assert.Equal(t, cfg.SSLMode, plan.cfg.SSLMode)
			assert.Len(t, plan.hosts, 1+len(cfg.Multi))
			assert.NotContains(t, plan.String(), "password")
		})
	}
}

// TestNegotiateOtherAddress: a dial to an address that is none of the
// plan's hosts is refused, never left unencrypted.
func TestNegotiateOtherAddress(t *testing.T) {
	_, plan := planTLS(mustConfig(t, "host=db port=5432 user=u sslmode=require"))
	require.NotNil(t, plan)
	c1, c2 := net.Pipe()
	defer c2.Close()
	got, encrypted, err := plan.negotiate(context.Background(), c1, "elsewhere:5432", nil)
	require.ErrorContains(t, err, "elsewhere:5432 is none of the DSN's hosts")
	assert.False(t, encrypted)
	assert.Nil(t, got)
	_, err = c1.Write([]byte{0})
	assert.ErrorIs(t, err, io.ErrClosedPipe, "the connection is closed")
}

// fakeServer answers each connection's first 8 bytes with answer (or
// nothing, when it is 0) and then holds the connection open. accepted(n)
// waits (up to 10s) for the n-th connection and returns how many came.
func fakeServer(t *testing.T, answer byte) (address string, accepted func(n int) int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	count := make(chan int, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n := 0
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n++
			count <- n
			go func() {
				defer c.Close()
				var req [8]byte
				if _, err := io.ReadFull(c, req[:]); err != nil || answer == 0 {
					_, _ = io.Copy(io.Discard, c)
					return
				}
				_, _ = c.Write([]byte{answer})
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	seen := 0
	return ln.Addr().String(), func(n int) int {
		timeout := time.After(10 * time.Second)
		for seen < n {
			select {
			case seen = <-count:
			case <-timeout:
				return seen
			}
		}
		// Any more would be in the channel by now, or soon: look once.
		select {
		case seen = <-count:
		case <-time.After(50 * time.Millisecond):
		}
		return seen
	}
}

func dialPlan(t *testing.T, dsn, address string) (net.Conn, bool, error) {
	t.Helper()
	_, plan := planTLS(mustConfig(t, dsn))
	require.NotNil(t, plan)
	dial := func() (net.Conn, error) { return net.Dial("tcp", address) }
	c, err := dial()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	got, encrypted, err := plan.negotiate(ctx, c, address, dial)
	if got != nil {
		t.Cleanup(func() { _ = got.Close() })
	}
	return got, encrypted, err
}

// TestNegotiateServerWithoutTLS: a server that answers the SSLRequest with
// 'N' fails sslmode=require with lib/pq's error, and sends sslmode=prefer
// to a new plaintext connection, as lib/pq does.
func TestNegotiateServerWithoutTLS(t *testing.T) {
	address, accepted := fakeServer(t, 'N')
	host, port, err := net.SplitHostPort(address)
	require.NoError(t, err)
	dsn := "host=" + host + " port=" + port + " user=u "

	_, _, err = dialPlan(t, dsn+"sslmode=require", address)
	require.ErrorIs(t, err, pq.ErrSSLNotSupported)
	assert.Equal(t, 1, accepted(1))

	c, encrypted, err := dialPlan(t, dsn+"sslmode=prefer", address)
	require.NoError(t, err)
	assert.False(t, encrypted)
	_, isTLS := c.(*tls.Conn)
	assert.False(t, isTLS)
	assert.Equal(t, 3, accepted(3), "prefer tries again on a new connection (the dials so far: require, prefer, its retry)")
}

// TestNegotiateBoundedByContext: a server that never answers the
// SSLRequest holds the dial only until the context ends (lib/pq's
// connect_timeout, or the caller's context).
func TestNegotiateBoundedByContext(t *testing.T) {
	address, _ := fakeServer(t, 0)
	host, port, err := net.SplitHostPort(address)
	require.NoError(t, err)
	start := time.Now()
	_, _, err = dialPlan(t, "host="+host+" port="+port+" user=u sslmode=require", address)
	require.Error(t, err)
	assert.True(t, isTimeout(err) || errors.Is(err, context.DeadlineExceeded), "%v", err)
	assert.Less(t, time.Since(start), 10*time.Second)
}

// TestNegotiateConfigErrors: settings that cannot make a TLS
// configuration fail the dial with lib/pq's error, and send
// sslmode=prefer on without TLS.
func TestNegotiateConfigErrors(t *testing.T) {
	address, accepted := fakeServer(t, 'S')
	host, port, err := net.SplitHostPort(address)
	require.NoError(t, err)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "root.crt")
	require.NoError(t, os.WriteFile(notPEM, []byte("not a certificate"), 0o600))
	dsn := "host=" + host + " port=" + port + " user=u sslrootcert=" + notPEM + " "
	_, _, err = dialPlan(t, dsn+"sslmode=verify-ca", address)
	require.EqualError(t, err, "pq: couldn't parse pem from sslrootcert")
	_, encrypted, err := dialPlan(t, dsn+"sslmode=prefer", address)
	require.NoError(t, err)
	assert.False(t, encrypted)
	assert.Equal(t, 1+2, accepted(3), "no SSLRequest for a bad configuration; prefer dials again")
}

func TestKeyPermissions(t *testing.T) {
	dir := t.TempDir()
	for mode, want := range map[os.FileMode]error{
		0o600: nil,
		0o400: nil,
		0o644: pq.ErrSSLKeyHasWorldPermissions,
		0o604: pq.ErrSSLKeyHasWorldPermissions,
	} {
		f := filepath.Join(dir, strconv.Itoa(int(mode)))
		require.NoError(t, os.WriteFile(f, nil, 0o600))
		require.NoError(t, os.Chmod(f, mode))
		assert.Equal(t, want, keyPermissions(f), "%o", mode)
	}
	// 0640 passes only for a key that root owns, as in lib/pq.
	f := filepath.Join(dir, "group")
	require.NoError(t, os.WriteFile(f, nil, 0o600))
	require.NoError(t, os.Chmod(f, 0o640))
	if os.Geteuid() == 0 {
		assert.NoError(t, keyPermissions(f))
	} else {
		assert.ErrorIs(t, keyPermissions(f), pq.ErrSSLKeyHasWorldPermissions)
	}
	assert.True(t, errors.Is(keyPermissions(filepath.Join(dir, "missing")), os.ErrNotExist))
}

func TestTLSVersion(t *testing.T) {
	for v, want := range map[pq.SSLProtocolVersion]uint16{
		"":                         0,
		pq.SSLProtocolVersionTLS10: tls.VersionTLS10,
		pq.SSLProtocolVersionTLS11: tls.VersionTLS11,
		pq.SSLProtocolVersionTLS12: tls.VersionTLS12,
		pq.SSLProtocolVersionTLS13: tls.VersionTLS13,
	} {
		assert.Equal(t, want, tlsVersion(v), v)
	}
}

// testCA is a certificate authority made for a test, with what it signed.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pemFile string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-48 * time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	file := filepath.Join(t.TempDir(), name+".crt")
	require.NoError(t, os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return &testCA{cert: cert, key: key, pemFile: file}
}

// serverCert is a certificate for localhost and 127.0.0.1 signed by ca,
// valid until notAfter.
func (ca *testCA) serverCert(t *testing.T, notAfter time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

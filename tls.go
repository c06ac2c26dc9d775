package jsonstream

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lib/pq"
)

// jsonstream's dialer negotiates TLS itself, so that the socket beneath
// lib/pq carries protocol messages (frame.go) on TLS connections too:
//
//	TCP or Unix socket → TLS (jsonstream's dialer) → framing → lib/pq
//
// It negotiates as lib/pq v1.12.3 does for the same settings, read with
// lib/pq's own parser (pq.NewConfig): the same sslmode, sslnegotiation,
// sslrootcert, sslcert/sslkey (and the key file's permission rules),
// sslinline, sslsni, ssl_min/max_protocol_version, the files under
// ~/.postgresql, the same fallbacks of sslmode=prefer and the same errors
// where lib/pq has exported ones. lib/pq then gets the connection with TLS
// established and sslmode=disable, so that it does not negotiate again;
// it goes on doing everything else (startup, authentication, SCRAM, every
// statement outside a stream).
//
// Three settings are left to lib/pq's own TLS: sslmode=allow, which tries
// without TLS first and with it only when the login fails (its first
// attempt is plaintext, which the framer follows), sslmode=prefer with
// connect_timeout, whose fallback lib/pq gives a new deadline after the
// dialer returns, and a tls.Config registered with pq.RegisterTLSConfig
// (sslmode=pqgo-…), which lib/pq keeps to itself. On such a TLS connection the socket sees ciphertext:
// the framer stays off and jsonstream works as it does without it.

// sslRequestCode is the SSLRequest's code (1234, 5679).
const sslRequestCode = 80877103

// tlsPlan is how jsonstream's dialer negotiates TLS for one connector.
type tlsPlan struct {
	// cfg is the configuration the user gave, as lib/pq parsed it.
	cfg pq.Config
	// hosts maps each address lib/pq dials to the host it dials it for,
	// whose name TLS checks (verify-full) and sends (SNI).
	hosts map[string]pq.Config
}

// planTLS returns the configuration lib/pq gets and jsonstream's TLS plan
// for cfg: nil when there is no TLS to negotiate (sslmode=disable, a Unix
// socket) or when lib/pq keeps its own (sslmode=allow, pqgo-…,
// sslmode=prefer with connect_timeout, a host list that cannot be told
// apart by address).
func planTLS(cfg pq.Config) (pq.Config, *tlsPlan) {
	switch cfg.SSLMode {
	case pq.SSLModePrefer:
		if cfg.ConnectTimeout > 0 {
			// lib/pq's fallback to plaintext redials with a new
			// connect_timeout, which lib/pq's dial sets on the connection
			// after the dialer returns: a dialer cannot give it that.
			return cfg, nil
		}
	case "", pq.SSLModeRequire, pq.SSLModeVerifyCA, pq.SSLModeVerifyFull:
	default:
		return cfg, nil
	}
	p := &tlsPlan{cfg: cfg, hosts: make(map[string]pq.Config, 1+len(cfg.Multi))}
	for _, h := range hostConfigs(cfg) {
		_, address := network(h)
		if seen, ok := p.hosts[address]; ok && seen.Host != h.Host {
			// Two host names on one address: which one a dial is for
			// cannot be told, and the name decides verify-full and SNI.
			return cfg, nil
		}
		p.hosts[address] = h
	}
	inner := cfg.Clone()
	inner.SSLMode = pq.SSLModeDisable
	inner.SSLNegotiation = pq.SSLNegotiationPostgres
	return inner, p
}

// hostConfigs is cfg once per host it names, as lib/pq tries them.
func hostConfigs(cfg pq.Config) []pq.Config {
	all := []pq.Config{cfg}
	for _, m := range cfg.Multi {
		c := cfg
		c.Host, c.Hostaddr, c.Port = m.Host, m.Hostaddr, m.Port
		all = append(all, c)
	}
	return all
}

// network is the network and address lib/pq dials for cfg's host.
func network(cfg pq.Config) (string, string) {
	if cfg.Hostaddr != (netip.Addr{}) {
		return "tcp", net.JoinHostPort(cfg.Hostaddr.String(), strconv.Itoa(int(cfg.Port)))
	}
	if filepath.IsAbs(cfg.Host) || strings.HasPrefix(cfg.Host, "@") {
		return "unix", filepath.Join(cfg.Host, ".s.PGSQL."+strconv.Itoa(int(cfg.Port)))
	}
	return "tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

// negotiate establishes TLS on conn, just dialed to address, as lib/pq
// would: it returns the connection lib/pq is to use, which for
// sslmode=prefer may be a new plaintext one (redial). An address that is
// not one of the plan's is refused.
func (p *tlsPlan) negotiate(ctx context.Context, conn net.Conn, address string, redial func() (net.Conn, error)) (net.Conn, bool, error) {
	cfg, ok := p.hosts[address]
	if !ok {
		// lib/pq dials only the addresses of its hosts; another one could
		// not be given the TLS its settings ask for.
		_ = conn.Close()
		return nil, false, fmt.Errorf("jsonstream: TLS: %s is none of the DSN's hosts", address)
	}
	tc, err := p.upgrade(ctx, conn, cfg)
	if err == nil {
		return tc, true, nil
	}
	_ = conn.Close()
	if cfg.SSLMode != pq.SSLModePrefer || errors.Is(err, errNoFallback) {
		return nil, false, unwrapNoFallback(err)
	}
	// lib/pq tries again without TLS, on a new connection.
	conn, err = redial()
	return conn, false, err
}

// errNoFallback marks a failure after which even sslmode=prefer does not
// try again without TLS: in lib/pq the TLS handshake runs later, in the
// login, past the point where prefer falls back.
var errNoFallback = errors.New("no fallback")

type noFallback struct{ err error }

func (e noFallback) Error() string        { return e.err.Error() }
func (e noFallback) Is(target error) bool { return target == errNoFallback }
func (e noFallback) Unwrap() error        { return e.err }
func unwrapNoFallback(err error) error {
	var nf noFallback
	if errors.As(err, &nf) {
		return nf.err
	}
	return err
}

// upgrade asks for TLS on conn and returns the TLS connection, with its
// handshake done: the SSLRequest and its answer (unless
// sslnegotiation=direct), then the handshake and the checks of cfg's
// sslmode. It is bounded by ctx, which carries lib/pq's connect_timeout.
func (p *tlsPlan) upgrade(ctx context.Context, conn net.Conn, cfg pq.Config) (net.Conn, error) {
	conf, verifyCAOnly, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(deadline); err != nil {
			return nil, err
		}
	}
	expired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = conn.SetDeadline(time.Unix(1, 0))
		close(expired)
	})
	defer func() {
		if !stop() {
			<-expired // its deadline must not land after the clear below
		}
		_ = conn.SetDeadline(time.Time{})
	}()
	if cfg.SSLNegotiation != pq.SSLNegotiationDirect {
		var req [8]byte
		binary.BigEndian.PutUint32(req[:], 8)
		binary.BigEndian.PutUint32(req[4:], sslRequestCode)
		if _, err := conn.Write(req[:]); err != nil {
			return nil, ctxErr(ctx, err)
		}
		var answer [1]byte
		if _, err := io.ReadFull(conn, answer[:]); err != nil {
			return nil, ctxErr(ctx, err)
		}
		if answer[0] != 'S' {
			return nil, pq.ErrSSLNotSupported
		}
	}
	client := tls.Client(conn, conf)
	// Handshake, not HandshakeContext: the deadline above bounds it, and
	// its timeout is the socket's, as lib/pq's handshake reports it; a
	// context canceled meanwhile sets a past deadline (the AfterFunc).
	if err := client.Handshake(); err != nil {
		err = ctxErr(ctx, err)
		if verifyCAOnly {
			return nil, err // lib/pq's handshake for verify-ca runs here too
		}
		return nil, noFallback{err}
	}
	if verifyCAOnly {
		if err := verifyCA(client, conf); err != nil {
			return nil, err
		}
	}
	return client, nil
}

// ctxErr is err, or the context's error when a cancel of the context
// ended it. A deadline's (connect_timeout's) is the socket's timeout, a
// *net.OpError, as lib/pq reports it.
func ctxErr(ctx context.Context, err error) error {
	e := ctx.Err()
	if e == nil || errors.Is(e, context.DeadlineExceeded) && isTimeout(err) {
		return err
	}
	return e
}

// verifyCA checks the server's certificate chain against the root
// certificates, without its host name: sslmode=verify-ca, and require or
// prefer with a root certificate.
func verifyCA(client *tls.Conn, conf *tls.Config) error {
	certs := client.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return errors.New("jsonstream: the server sent no certificate")
	}
	opts := x509.VerifyOptions{Intermediates: x509.NewCertPool(), Roots: conf.RootCAs}
	for _, cert := range certs[1:] {
		opts.Intermediates.AddCert(cert)
	}
	_, err := certs[0].Verify(opts)
	return err
}

// tlsConfig is the tls.Config lib/pq builds for cfg, and whether the
// server's certificate is then checked against the root certificates
// only (without its host name) after the handshake.
func tlsConfig(cfg pq.Config) (*tls.Config, bool, error) {
	home := pgHome()
	conf := &tls.Config{}
	verifyCAOnly := false
	mode := cfg.SSLMode
	if mode != "" && !cfg.SSLInline && cfg.SSLRootCert == "" && home != "" {
		f := filepath.Join(home, "root.crt")
		if _, err := os.Stat(f); err == nil {
			cfg.SSLRootCert = f
		}
	}
	switch mode {
	case "", pq.SSLModeRequire, pq.SSLModePrefer:
		// Certificates are checked below when there is a root
		// certificate; without one, any certificate goes.
		conf.InsecureSkipVerify = true
		if cfg.SSLRootCert != "" {
			if cfg.SSLInline {
				verifyCAOnly = true
			} else if _, err := os.Stat(cfg.SSLRootCert); err == nil {
				verifyCAOnly = true
			} else if cfg.SSLRootCert != "system" {
				cfg.SSLRootCert = ""
			}
		}
	case pq.SSLModeVerifyCA:
		conf.InsecureSkipVerify = true
		verifyCAOnly = true
	case pq.SSLModeVerifyFull:
		conf.ServerName = cfg.Host
	}
	conf.MinVersion = tlsVersion(cfg.SSLMinProtocolVersion)
	conf.MaxVersion = tlsVersion(cfg.SSLMaxProtocolVersion)
	if cfg.SSLSNI {
		// crypto/tls sends no SNI for an IP address, as RFC 6066 asks.
		conf.ServerName = cfg.Host
	}
	if err := clientCertificate(conf, cfg, home); err != nil {
		return nil, false, err
	}
	rootPEM, err := rootCertificates(conf, cfg)
	if err != nil {
		return nil, false, err
	}
	appendIntermediates(conf, cfg, rootPEM)
	// Renegotiation was removed from PostgreSQL 9.5; older servers and
	// Redshift may still ask for it.
	conf.Renegotiation = tls.RenegotiateFreelyAsClient
	return conf, verifyCAOnly, nil
}

// tlsVersion is the crypto/tls version of ssl_min/max_protocol_version; 0
// (crypto/tls's default) when unset.
func tlsVersion(v pq.SSLProtocolVersion) uint16 {
	switch v {
	case pq.SSLProtocolVersionTLS10:
		return tls.VersionTLS10
	case pq.SSLProtocolVersionTLS11:
		return tls.VersionTLS11
	case pq.SSLProtocolVersionTLS12:
		return tls.VersionTLS12
	case pq.SSLProtocolVersionTLS13:
		return tls.VersionTLS13
	}
	return 0
}

// clientCertificate loads the client certificate of sslcert and sslkey,
// or of ~/.postgresql/postgresql.crt and .key when they are not set; the
// files must exist and the key must not be readable by others.
func clientCertificate(conf *tls.Config, cfg pq.Config, home string) error {
	var cert tls.Certificate
	var err error
	if cfg.SSLInline {
		cert, err = tls.X509KeyPair([]byte(cfg.SSLCert), []byte(cfg.SSLKey))
		if err != nil {
			return err
		}
	} else {
		if cfg.SSLCert == "" && home != "" {
			cfg.SSLCert = filepath.Join(home, "postgresql.crt")
		}
		if cfg.SSLCert == "" {
			return nil
		}
		if _, err := os.Stat(cfg.SSLCert); err != nil {
			if notExist(err) {
				return nil
			}
			return err
		}
		if cfg.SSLKey == "" && home != "" {
			cfg.SSLKey = filepath.Join(home, "postgresql.key")
		}
		if cfg.SSLKey != "" {
			if err := keyPermissions(cfg.SSLKey); err != nil {
				return err
			}
		}
		if cert, err = tls.LoadX509KeyPair(cfg.SSLCert, cfg.SSLKey); err != nil {
			return err
		}
	}
	// GetClientCertificate rather than Certificates: crypto/tls sends a
	// certificate from Certificates only when the server names its issuer
	// among the CAs it accepts, which fails for one signed by an
	// intermediate.
	conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &cert, nil
	}
	return nil
}

// rootCertificates loads sslrootcert's certificates into conf; "system"
// keeps the system's.
func rootCertificates(conf *tls.Config, cfg pq.Config) ([]byte, error) {
	if cfg.SSLRootCert == "" || cfg.SSLRootCert == "system" {
		return nil, nil
	}
	conf.RootCAs = x509.NewCertPool()
	var certs []byte
	if cfg.SSLInline {
		certs = []byte(cfg.SSLRootCert)
	} else {
		var err error
		if certs, err = os.ReadFile(cfg.SSLRootCert); err != nil {
			return nil, err
		}
	}
	if !conf.RootCAs.AppendCertsFromPEM(certs) {
		return nil, errors.New("pq: couldn't parse pem from sslrootcert")
	}
	return certs, nil
}

// appendIntermediates sends the intermediate CA certificates of
// sslrootcert with the client certificate, so that the server can check
// one signed by an intermediate.
func appendIntermediates(conf *tls.Config, cfg pq.Config, rootPEM []byte) {
	if cfg.SSLRootCert == "" || conf.GetClientCertificate == nil || len(rootPEM) == 0 {
		return
	}
	var intermediates [][]byte
	for rest := slices.Clone(rootPEM); ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			continue
		}
		if cert.IsCA && !bytes.Equal(cert.RawIssuer, cert.RawSubject) {
			intermediates = append(intermediates, block.Bytes)
		}
	}
	if len(intermediates) == 0 {
		return
	}
	get := conf.GetClientCertificate
	conf.GetClientCertificate = func(info *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, err := get(info)
		if err != nil {
			return cert, err
		}
		chain := *cert
		chain.Certificate = append(slices.Clip(cert.Certificate), intermediates...)
		return &chain, nil
	}
}

// pgHome is the directory of the client's PostgreSQL files, as lib/pq
// finds it: ~/.postgresql, or %APPDATA%/postgresql on Windows.
func pgHome() string {
	if runtime.GOOS == "windows" {
		if ad := os.Getenv("APPDATA"); ad != "" {
			return filepath.Join(ad, "postgresql")
		}
		return ""
	}
	home, _ := os.UserHomeDir()
	if home == "" {
		u, err := user.Current()
		if err != nil {
			return ""
		}
		home = u.HomeDir
	}
	return filepath.Join(home, ".postgresql")
}

// notExist reports whether err says that a file is missing.
func notExist(err error) bool {
	var pe *os.PathError
	return errors.As(err, &pe) && (errors.Is(pe.Err, syscall.ENOENT) || errors.Is(pe.Err, syscall.ENOTDIR))
}

// String names the plan's hosts and mode, for errors; never a secret.
func (p *tlsPlan) String() string {
	return fmt.Sprintf("sslmode=%q sslnegotiation=%q", p.cfg.SSLMode, p.cfg.SSLNegotiation)
}

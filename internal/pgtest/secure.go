package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Roles of the throwaway server besides the trusted superuser postgres.
// Both are superusers, so that tests through them see every table and
// every backend in pg_stat_activity.
const (
	// CertUser logs in over TLS with the client certificate (ClientCert),
	// whose common name it is; pg_hba has "hostssl ... cert" for it.
	CertUser = "jsonstream_cert"
	// SCRAMUser logs in with SCRAMPassword by SCRAM-SHA-256, over TCP and
	// over the Unix socket.
	SCRAMUser = "jsonstream_scram"
)

// hbaConf replaces initdb's pg_hba.conf: first match wins, so the two
// roles above are held to their methods and everything else is trusted.
// Database "all" does not match replication connections, which
// StartStandby's pg_basebackup and the standby it makes open; they have
// lines of their own.
const hbaConf = `# pgtest: written by the harness
local   all ` + SCRAMUser + `                 scram-sha-256
local   all all                              trust
local   replication all                      trust
hostssl all ` + CertUser + `  127.0.0.1/32   cert
hostssl all ` + CertUser + `  ::1/128        cert
host    all ` + SCRAMUser + ` 127.0.0.1/32   scram-sha-256
host    all ` + SCRAMUser + ` ::1/128        scram-sha-256
host    all all               127.0.0.1/32   trust
host    all all               ::1/128        trust
host    replication all       127.0.0.1/32   trust
host    replication all       ::1/128        trust
`

// The certificate files, in the server's directory.
const (
	caCertFile     = "ca.crt"
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
	clientDir      = "client" // the client's files, owned by whoever runs the tests
	clientCertFile = "client.crt"
	clientKeyFile  = "client.key"
)

// CAFile is the certificate of the CA that signed the server's and the
// client's certificates: the sslrootcert for sslmode=verify-full.
func (s *Server) CAFile() string { return filepath.Join(s.dir, clientDir, caCertFile) }

// ClientCert returns the client certificate and key files for CertUser:
// the sslcert and sslkey of a DSN.
func (s *Server) ClientCert() (cert, key string) {
	return filepath.Join(s.dir, clientDir, clientCertFile), filepath.Join(s.dir, clientDir, clientKeyFile)
}

// SocketDir is the directory of the server's Unix socket: the host of a
// DSN that connects through it.
func (s *Server) SocketDir() string { return s.dir }

// SCRAMPassword is SCRAMUser's password, made at random for each server.
func (s *Server) SCRAMPassword() string { return s.scramPassword }

// DSNAs returns a key=value DSN for TCP on 127.0.0.1 with extra appended,
// such as "user=... sslmode=require".
func (s *Server) DSNAs(extra string) string {
	return "host=127.0.0.1 port=" + strconv.Itoa(s.port) + " dbname=postgres " + extra
}

// setupSecurity writes the certificates and pg_hba.conf into a freshly
// initialised cluster. The server's key must belong to the account the
// server runs as; the client's files to us, as lib/pq checks the key's
// owner and mode.
func (s *Server) setupSecurity() error {
	pw := make([]byte, 12)
	if _, err := rand.Read(pw); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	s.scramPassword = "pw-" + hex.EncodeToString(pw)

	certs, err := makeCerts()
	if err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(s.dir, clientDir), 0o700); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	files := []struct {
		path   string
		data   []byte
		server bool
	}{
		{filepath.Join(s.dataDir(), caCertFile), certs.ca, true},
		{filepath.Join(s.dataDir(), serverCertFile), certs.serverCert, true},
		{filepath.Join(s.dataDir(), serverKeyFile), certs.serverKey, true},
		{filepath.Join(s.dataDir(), "pg_hba.conf"), []byte(hbaConf), true},
		{s.CAFile(), certs.ca, false},
		{filepath.Join(s.dir, clientDir, clientCertFile), certs.clientCert, false},
		{filepath.Join(s.dir, clientDir, clientKeyFile), certs.clientKey, false},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return fmt.Errorf("pgtest: %w", err)
		}
		if f.server && s.owner != nil {
			if err := os.Chown(f.path, int(s.owner.uid), int(s.owner.gid)); err != nil {
				return fmt.Errorf("pgtest: %w", err)
			}
		}
	}
	return nil
}

// securitySettings are the server settings that go with setupSecurity.
func securitySettings() []string {
	return []string{
		"-c", "ssl=on",
		"-c", "ssl_cert_file=" + serverCertFile,
		"-c", "ssl_key_file=" + serverKeyFile,
		"-c", "ssl_ca_file=" + caCertFile,
		"-c", "password_encryption=scram-sha-256",
	}
}

// createRoles makes the roles of hbaConf; the server is up.
func (s *Server) createRoles(exec func(string) error) error {
	return exec(fmt.Sprintf(`CREATE ROLE %s SUPERUSER LOGIN; CREATE ROLE %s SUPERUSER LOGIN PASSWORD '%s'`,
		CertUser, SCRAMUser, s.scramPassword))
}

// pemCerts are the PEM files of a test PKI.
type pemCerts struct {
	ca, serverCert, serverKey, clientCert, clientKey []byte
}

// makeCerts makes a CA, a server certificate for localhost and 127.0.0.1
// (so verify-full passes with either host) and a client certificate for
// CertUser, valid from an hour ago (clock skew) for a day.
func makeCerts() (*pemCerts, error) {
	fail := func(err error) (*pemCerts, error) { return nil, fmt.Errorf("pgtest: certificates: %w", err) }
	now := time.Now()
	serial := int64(0)
	template := func(cn string) *x509.Certificate {
		serial++
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
		}
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fail(err)
	}
	caTmpl := template("pgtest CA")
	caTmpl.IsCA = true
	caTmpl.BasicConstraintsValid = true
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fail(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fail(err)
	}
	leaf := func(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
	}
	c := &pemCerts{ca: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	serverTmpl := template("localhost")
	serverTmpl.DNSNames = []string{"localhost"}
	serverTmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	serverTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	if c.serverCert, c.serverKey, err = leaf(serverTmpl); err != nil {
		return fail(err)
	}
	clientTmpl := template(CertUser)
	clientTmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if c.clientCert, c.clientKey, err = leaf(clientTmpl); err != nil {
		return fail(err)
	}
	return c, nil
}

// Package chclient turns the clickhouse section of the configuration into
// clickhouse-go options. Every ClickHouse connection cdc opens — the sink of
// `cdc run`, `migrate`, `status`, `verify`, `replay` — starts from here, so
// that credentials and TLS are the same on all of them.
//
// With clickhouse.tls.enabled, connections are dialled by [DialContext],
// which reads the CA bundle and the client certificate from their files at
// every dial: a certificate renewed on disk (cert-manager, a Secret update)
// is used from the next reconnect on, without a restart. Verification is
// crypto/tls's own (chain to the CA, then the server name), with errors that
// say which key to look at.
package chclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/outbox-cdc/outbox-cdc/internal/config"
)

// Options returns the options of a connection to the configured servers:
// addresses, database and credentials, dial timeout, compression and TLS.
// Callers adjust what is theirs (timeouts, pool size, another database).
func Options(c config.ClickHouse) *clickhouse.Options {
	o := &clickhouse.Options{
		Addr:        c.Addr,
		Auth:        clickhouse.Auth{Database: c.Database, Username: c.Username, Password: c.Password},
		DialTimeout: c.DialTimeout,
		DialContext: DialContext(c),
	}
	if c.LZ4() {
		o.Compression = &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
	}
	return o
}

// Dialer opens the network connection to one address of clickhouse.addr.
type Dialer = func(ctx context.Context, addr string) (net.Conn, error)

// DialContext returns the dialer for clickhouse.tls, or nil when TLS is off
// (clickhouse-go then dials plain TCP itself).
func DialContext(c config.ClickHouse) Dialer {
	if !c.TLS.Enabled {
		return nil
	}
	t, timeout := c.TLS, c.DialTimeout
	return func(ctx context.Context, addr string) (net.Conn, error) {
		cfg, err := tlsConfig(t, addr)
		if err != nil {
			return nil, err
		}
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, explain(addr, cfg.ServerName, t, err)
		}
		return &alertConn{Conn: conn, addr: addr, tls: t}, nil
	}
}

// alertConn explains the server's TLS alerts. With TLS 1.3 the client's
// handshake is over before the server has checked the client certificate,
// so a refused (or missing) certificate arrives as an alert at the first
// read, inside clickhouse-go's handshake, not from the dial.
//
// The alert can also lose the race against the client's first write, which
// then fails with a reset connection: the alert is usually still in the
// receive buffer, so a failed first write looks for it.
type alertConn struct {
	net.Conn
	addr  string
	tls   config.ClickHouseTLS
	wrote bool
}

func (c *alertConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if e := c.explainAlert(err); e != nil {
		return n, e
	}
	return n, err
}

func (c *alertConn) Write(p []byte) (int, error) {
	first := !c.wrote
	c.wrote = true
	n, err := c.Conn.Write(p)
	if err == nil || !first {
		return n, err
	}
	c.Conn.SetReadDeadline(time.Now().Add(time.Second))
	_, rerr := c.Conn.Read(make([]byte, 1))
	if e := c.explainAlert(rerr); e != nil {
		return n, e
	}
	return n, fmt.Errorf("clickhouse %s: TLS: the server closed the connection right after the handshake (does it require a client certificate it accepts, clickhouse.tls.cert_file and key_file?): %w", c.addr, err)
}

// explainAlert returns the explained error for a TLS alert from the server,
// else nil.
func (c *alertConn) explainAlert(err error) error {
	var op *net.OpError
	if err == nil || !errors.As(err, &op) || op.Op != "remote error" {
		return nil
	}
	if c.tls.CertFile == "" {
		return fmt.Errorf("clickhouse %s: TLS: the server refused the connection; if it requires a client certificate, set clickhouse.tls.cert_file and key_file: %w", c.addr, err)
	}
	return fmt.Errorf("clickhouse %s: TLS: the server refused the connection or the client certificate clickhouse.tls.cert_file %s (is it signed by a CA the server trusts?): %w", c.addr, c.tls.CertFile, err)
}

// Warn logs the settings that weaken TLS; commands call it once at start.
func Warn(log *slog.Logger, c config.ClickHouse) {
	if c.TLS.Enabled && c.TLS.InsecureSkipVerify {
		log.Warn("clickhouse.tls.insecure_skip_verify is true: the server certificate is not checked, so the connection is open to a man in the middle; set clickhouse.tls.ca_file instead",
			"clickhouse", c.Addr)
	}
}

// tlsConfig reads the files now: this runs at every dial, which is what
// makes rotation work without a restart.
func tlsConfig(t config.ClickHouseTLS, addr string) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify,
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, fmt.Errorf("clickhouse.addr %q: %w", addr, err)
		}
		cfg.ServerName = host
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("clickhouse.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("clickhouse.tls.ca_file %s: no PEM certificate in it", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("clickhouse.tls.cert_file %s / key_file %s: %w", t.CertFile, t.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// explain names the key that fixes a failed handshake.
func explain(addr, serverName string, t config.ClickHouseTLS, err error) error {
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		remote   *net.OpError
		header   tls.RecordHeaderError
	)
	ca := "the system's roots"
	if t.CAFile != "" {
		ca = "clickhouse.tls.ca_file " + t.CAFile
	}
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("clickhouse %s: TLS: the server certificate is not signed by a CA of %s: %w", addr, ca, err)
	case errors.As(err, &hostname):
		return fmt.Errorf("clickhouse %s: TLS: the server certificate is not valid for %q (set clickhouse.tls.server_name to a name it carries, or connect by that name): %w", addr, serverName, err)
	case errors.As(err, &invalid):
		return fmt.Errorf("clickhouse %s: TLS: the server certificate is not valid: %w", addr, err)
	case errors.As(err, &header):
		return fmt.Errorf("clickhouse %s: TLS: the server did not answer in TLS (is this its tcp_port_secure, 9440 by convention?): %w", addr, err)
	case errors.As(err, &remote) && remote.Op == "remote error":
		return fmt.Errorf("clickhouse %s: TLS: the server refused the handshake (does it require a client certificate, clickhouse.tls.cert_file and key_file?): %w", addr, err)
	}
	return fmt.Errorf("clickhouse %s: TLS: %w", addr, err)
}

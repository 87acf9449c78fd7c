package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Load builds the configuration from the defaults, the YAML file at path
// (skipped when path is "") and the CDC_* environment variables, then
// validates it with [Config.Validate]. An unknown CDC_* variable fails like an
// unknown key in the file ([CheckEnv]). The first problem found is returned as
// one error naming the key (a *[KeyError] for bad values).
func Load(path string) (*Config, error) {
	if err := CheckEnv(os.Environ()); err != nil {
		return nil, err
	}
	v := viper.New()
	v.SetConfigType("yaml")
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for _, s := range specs {
		v.SetDefault(s.key, s.def)
		if err := v.BindEnv(s.key, EnvVar(s.key)); err != nil {
			return nil, err
		}
	}

	var fileLines map[string]int // key -> line, for keys the file sets
	var views []View
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		if fileLines, err = checkFile(path, data); err != nil {
			return nil, err
		}
		if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		if views, err = readViews(path, data); err != nil {
			return nil, err
		}
	}

	readFrom := map[string]string{} // secret key -> "its _file key (path)"
	source := func(key string) string {
		if from, ok := readFrom[key]; ok {
			return "read from " + from
		}
		if val, ok := os.LookupEnv(EnvVar(key)); ok && val != "" {
			return "from " + EnvVar(key)
		}
		if line, ok := fileLines[key]; ok {
			return fmt.Sprintf("from %s line %d", path, line)
		}
		return ""
	}

	c := &Config{Views: views}
	for _, s := range specs {
		if err := s.set(c, v.Get(s.key)); err != nil {
			return nil, withSource(err, source)
		}
	}
	for _, sf := range secretFiles {
		if err := sf.read(c, source, readFrom); err != nil {
			return nil, withSource(err, source)
		}
	}
	if err := c.Validate(); err != nil {
		return nil, withSource(err, source)
	}
	return c, nil
}

// secretFile pairs a secret key with its _file twin, which names a file
// holding the secret: how Kubernetes (a Secret mounted as files) and systemd
// (LoadCredential=) hand secrets over without an environment variable that
// /proc/PID/environ, a crash dump or `docker inspect` would show.
type secretFile struct {
	key, fileKey string
	ptr          func(*Config) (value, path *string)
}

var secretFiles = []secretFile{
	{"postgres.url", "postgres.url_file", func(c *Config) (*string, *string) { return &c.Postgres.URL, &c.Postgres.URLFile }},
	{"clickhouse.password", "clickhouse.password_file", func(c *Config) (*string, *string) { return &c.ClickHouse.Password, &c.ClickHouse.PasswordFile }},
	{"sentry.dsn", "sentry.dsn_file", func(c *Config) (*string, *string) { return &c.Sentry.DSN, &c.Sentry.DSNFile }},
}

// read fills the secret from the file its twin names, once, at start. The
// file's trailing newline (editors and `echo` add one) is not part of the
// secret. Errors name the _file key and the path, never the content.
func (sf secretFile) read(c *Config, source func(string) string, readFrom map[string]string) error {
	value, path := sf.ptr(c)
	if *path == "" {
		return nil
	}
	if *value != "" {
		msg := "must not be set together with " + sf.key
		if src := source(sf.key); src != "" {
			msg += " (" + sf.key + " is set " + src + ")"
		}
		return keyErr(sf.fileKey, "%s: set only one of them", msg)
	}
	data, err := os.ReadFile(*path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return keyErr(sf.fileKey, "names a file that cannot be read: %s: %v", *path, err)
	}
	secret := strings.TrimRight(string(data), "\r\n")
	if secret == "" {
		return keyErr(sf.fileKey, "names an empty file: %s", *path)
	}
	*value = secret
	readFrom[sf.key] = sf.fileKey + " " + *path
	return nil
}

func withSource(err error, source func(key string) string) error {
	var ke *KeyError
	if errors.As(err, &ke) && ke.Source == "" {
		ke.Source = source(ke.Key)
	}
	return err
}

// checkFile parses the YAML and rejects anything that is not
// "section: {key: value}" with known sections and keys, so that typos fail
// loudly instead of silently leaving the default in place. It returns the
// line of every key the file sets.
func checkFile(path string, data []byte) (map[string]int, error) {
	fail := func(line int, format string, args ...any) error {
		where := path
		if line > 0 {
			where = fmt.Sprintf("%s line %d", path, line)
		}
		return fmt.Errorf("config file %s: %s", where, fmt.Sprintf(format, args...))
	}

	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("config file %s: invalid YAML: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	lines := map[string]int{}
	if len(doc.Content) == 0 {
		return lines, nil // empty file
	}
	root := deref(doc.Content[0])
	if isNull(root) {
		return lines, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fail(root.Line, "the top level must be a mapping of sections such as postgres: and batch:")
	}

	seenSection := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], deref(root.Content[i+1])
		sec := strings.ToLower(kn.Value)
		if prev, dup := seenSection[sec]; dup {
			return nil, fail(kn.Line, "section %s appears twice (first at line %d)", sec, prev)
		}
		if sec == "views" {
			// A list of mappings, not keys: readViews parses it.
			seenSection[sec] = kn.Line
			continue
		}
		if len(children(sec)) == 0 {
			if knownKey(sec) {
				s, l, _ := strings.Cut(sec, ".")
				return nil, fail(kn.Line, "unknown key %q: write it nested, as %s: then %s: indented below it", kn.Value, s, l)
			}
			return nil, fail(kn.Line, "unknown key %q%s", kn.Value, suggest(sec))
		}
		seenSection[sec] = kn.Line
		if err := checkGroup(sec, kn, vn, lines, fail); err != nil {
			return nil, err
		}
	}
	return lines, nil
}

// checkGroup checks the mapping vn under the group key (a section such as
// batch, or a nested group such as clickhouse.tls) and records the line of
// every key it sets.
func checkGroup(group string, kn, vn *yaml.Node, lines map[string]int, fail func(int, string, ...any) error) error {
	if isNull(vn) {
		return nil
	}
	names := children(group)
	if vn.Kind != yaml.MappingNode {
		return fail(kn.Line, "%s must be a mapping of keys (%s)", group, strings.Join(names, ", "))
	}
	for j := 0; j+1 < len(vn.Content); j += 2 {
		lk, lv := vn.Content[j], deref(vn.Content[j+1])
		key := group + "." + strings.ToLower(lk.Value)
		if !contains(names, strings.ToLower(lk.Value)) {
			if knownKey(key) {
				head, rest, _ := strings.Cut(strings.ToLower(lk.Value), ".")
				return fail(lk.Line, "unknown key %q: write it nested, as %s: then %s: indented below it", group+"."+lk.Value, head, rest)
			}
			return fail(lk.Line, "unknown key %q%s", group+"."+lk.Value, suggest(key))
		}
		if prev, dup := lines[key]; dup {
			return fail(lk.Line, "%s is set twice (first at line %d)", key, prev)
		}
		lines[key] = lk.Line
		if len(children(key)) > 0 {
			if err := checkGroup(key, lk, lv, lines, fail); err != nil {
				return err
			}
		}
	}
	return nil
}

// children returns the names directly under group ("batch" gives size,
// flush_interval, …; "clickhouse" gives addr, …, tls), in documentation
// order; none for a key or an unknown name.
func children(group string) []string {
	var names []string
	for _, s := range specs {
		rest, ok := strings.CutPrefix(s.key, group+".")
		if !ok {
			continue
		}
		name, _, _ := strings.Cut(rest, ".")
		if !contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func knownKey(key string) bool {
	for _, s := range specs {
		if s.key == key {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// suggest returns ` (did you mean "batch.size"?)` for a near miss of a known
// key or section, or "".
func suggest(bad string) string {
	var cands []string
	seen := map[string]bool{}
	for _, s := range specs {
		sec, _, _ := strings.Cut(s.key, ".")
		for _, c := range []string{s.key, sec} {
			if !seen[c] {
				seen[c] = true
				cands = append(cands, c)
			}
		}
	}
	_, badLeaf, hasLeaf := strings.Cut(bad, ".")
	best, bestDist := "", 1<<30
	for _, c := range cands {
		d := levenshtein(bad, c)
		// The right key in the wrong section, e.g. postgres.dial_timeout.
		if _, leaf, ok := strings.Cut(c, "."); ok && hasLeaf && leaf == badLeaf && leaf != "" {
			d = min(d, 1)
		}
		if d < bestDist {
			best, bestDist = c, d
		}
	}
	limit := max(2, len(bad)/4)
	if best == "" || bestDist > limit {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

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
// validates it with [Config.Validate]. The first problem found is returned as
// one error naming the key (a *[KeyError] for bad values).
func Load(path string) (*Config, error) {
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
	}

	source := func(key string) string {
		if val, ok := os.LookupEnv(EnvVar(key)); ok && val != "" {
			return "from " + EnvVar(key)
		}
		if line, ok := fileLines[key]; ok {
			return fmt.Sprintf("from %s line %d", path, line)
		}
		return ""
	}

	c := &Config{}
	for _, s := range specs {
		if err := s.set(c, v.Get(s.key)); err != nil {
			return nil, withSource(err, source)
		}
	}
	if err := c.Validate(); err != nil {
		return nil, withSource(err, source)
	}
	return c, nil
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

	sections := map[string][]string{}
	for _, s := range specs {
		sec, leaf, _ := strings.Cut(s.key, ".")
		sections[sec] = append(sections[sec], leaf)
	}
	seenSection := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], deref(root.Content[i+1])
		sec := strings.ToLower(kn.Value)
		leaves, ok := sections[sec]
		if !ok {
			if knownKey(sec) {
				s, l, _ := strings.Cut(sec, ".")
				return nil, fail(kn.Line, "unknown key %q: write it nested, as %s: then %s: indented below it", kn.Value, s, l)
			}
			return nil, fail(kn.Line, "unknown key %q%s", kn.Value, suggest(sec))
		}
		if prev, dup := seenSection[sec]; dup {
			return nil, fail(kn.Line, "section %s appears twice (first at line %d)", sec, prev)
		}
		seenSection[sec] = kn.Line
		if isNull(vn) {
			continue
		}
		if vn.Kind != yaml.MappingNode {
			return nil, fail(kn.Line, "%s must be a mapping of keys (%s)", sec, strings.Join(leaves, ", "))
		}
		for j := 0; j+1 < len(vn.Content); j += 2 {
			lk := vn.Content[j]
			key := sec + "." + strings.ToLower(lk.Value)
			if !contains(leaves, strings.ToLower(lk.Value)) {
				return nil, fail(lk.Line, "unknown key %q%s", sec+"."+lk.Value, suggest(key))
			}
			if prev, dup := lines[key]; dup {
				return nil, fail(lk.Line, "%s is set twice (first at line %d)", key, prev)
			}
			lines[key] = lk.Line
		}
	}
	return lines, nil
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

package config

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// View is one per-event-type table (views: in the config file): `cdc
// migrate` creates the table and a materialized view that copies every
// event of EventType from the events table into it, with the columns
// computed by Columns. The events table stays the source of truth: a view's
// table can be dropped and rebuilt from it (docs/analytics.md).
//
// Views are a list of mappings, so they come from the config file only: no
// CDC_ variable sets them.
type View struct {
	// EventType is the event_type whose events go to the table
	// (views[i].event_type, required).
	EventType string
	// Table is the table's name in clickhouse.database (views[i].table,
	// required); the view is named Table + "_mv".
	Table string
	// Columns are the table's own columns, in the file's order
	// (views[i].columns: name → expression). The table also has id,
	// event_date_time and _fingerprint, copied from the event.
	Columns []ViewColumn
	// Source is where the entry is written ("from cdc.yaml line 12"), so
	// that validation errors point at it.
	Source string
}

// ViewColumn is one column of a view's table: a name and the ClickHouse
// expression over the events table's columns that fills it, e.g.
// JSONExtractString(event_context, 'order_id'). The column's type is the
// expression's type.
type ViewColumn struct {
	Name string
	Expr string
}

// ViewReserved are the columns every view table has, copied from the event:
// id and _fingerprint are the event's identity (a reused id is a new row,
// see docs/architecture.md), event_date_time partitions the table.
var ViewReserved = []string{"id", "event_date_time", "_fingerprint"}

// readViews parses the views: section of the config file, keeping the
// order of columns as written (viper's maps would lose it). Structural
// errors name the line.
func readViews(path string, data []byte) ([]View, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return nil, nil // checkFile has reported invalid YAML already
	}
	root := deref(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		return nil, nil
	}
	fail := func(n *yaml.Node, format string, args ...any) error {
		return fmt.Errorf("config file %s line %d: %s", path, n.Line, fmt.Sprintf(format, args...))
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], deref(root.Content[i+1])
		if strings.ToLower(kn.Value) != "views" || isNull(vn) {
			continue
		}
		if vn.Kind != yaml.SequenceNode {
			return nil, fail(kn, "views must be a list of entries with event_type, table and columns")
		}
		var views []View
		for j, item := range vn.Content {
			v, err := readView(deref(item), fmt.Sprintf("views[%d]", j), fail)
			if err != nil {
				return nil, err
			}
			v.Source = fmt.Sprintf("from %s line %d", path, item.Line)
			views = append(views, v)
		}
		return views, nil
	}
	return nil, nil
}

// readView parses one entry of views:.
func readView(n *yaml.Node, key string, fail func(*yaml.Node, string, ...any) error) (View, error) {
	var v View
	if n.Kind != yaml.MappingNode {
		return v, fail(n, "%s must be a mapping with event_type, table and columns", key)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], deref(n.Content[i+1])
		name := strings.ToLower(kn.Value)
		if seen[name] {
			return v, fail(kn, "%s.%s is set twice", key, name)
		}
		seen[name] = true
		switch name {
		case "event_type", "table":
			if vn.Kind != yaml.ScalarNode || isNull(vn) {
				return v, fail(kn, "%s.%s must be a string", key, name)
			}
			if name == "table" {
				v.Table = strings.TrimSpace(vn.Value)
			} else {
				v.EventType = vn.Value
			}
		case "columns":
			cols, err := readViewColumns(vn, key+".columns", fail)
			if err != nil {
				return v, err
			}
			v.Columns = cols
		default:
			return v, fail(kn, "unknown key %q (an entry of views has event_type, table and columns)", key+"."+kn.Value)
		}
	}
	return v, nil
}

func readViewColumns(n *yaml.Node, key string, fail func(*yaml.Node, string, ...any) error) ([]ViewColumn, error) {
	if n.Kind != yaml.MappingNode {
		return nil, fail(n, "%s must be a mapping of column name to ClickHouse expression", key)
	}
	var cols []ViewColumn
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], deref(n.Content[i+1])
		for _, c := range cols {
			if c.Name == kn.Value {
				return nil, fail(kn, "%s.%s is set twice", key, kn.Value)
			}
		}
		if vn.Kind != yaml.ScalarNode || isNull(vn) {
			return nil, fail(kn, "%s.%s must be a ClickHouse expression written as a string", key, kn.Value)
		}
		cols = append(cols, ViewColumn{Name: kn.Value, Expr: strings.TrimSpace(vn.Value)})
	}
	return cols, nil
}

// validateViews checks names and expressions that can be checked without a
// server; `cdc migrate` checks the expressions against the events table.
func (c *Config) validateViews() error {
	tables := map[string]int{}
	for i, v := range c.Views {
		key := fmt.Sprintf("views[%d]", i)
		err := v.validate(key, c.ClickHouse)
		if err == nil {
			if prev, dup := tables[v.Table]; dup {
				err = keyErr(key+".table", "names the table of views[%d] too (%q): each view needs its own table", prev, v.Table)
			}
		}
		if err != nil {
			if ke, ok := err.(*KeyError); ok {
				ke.Source = v.Source
			}
			return err
		}
		tables[v.Table] = i
	}
	return nil
}

func (v View) validate(key string, ch ClickHouse) error {
	if ch.Cluster != "" {
		return keyErr(key, "is not supported with clickhouse.cluster yet: the view would have to be made on every replica's %s_local (docs/analytics.md)", ch.Table)
	}
	if strings.TrimSpace(v.EventType) == "" {
		return keyErr(key+".event_type", "is required: the event_type whose events go to the table")
	}
	if !chIdent.MatchString(v.Table) {
		return keyErr(key+".table", "must be a table name of letters, digits and underscores, not starting with a digit, got %q", v.Table)
	}
	if v.Table == ch.Table || v.Table == ch.Table+"_local" || v.Table == "cdc_schema_migrations" {
		return keyErr(key+".table", "must not be %q: cdc's own tables are not view tables", v.Table)
	}
	if len(v.Columns) == 0 {
		return keyErr(key+".columns", "must list at least one column: name: expression, e.g. order_id: \"JSONExtractString(event_context, 'order_id')\"")
	}
	for _, col := range v.Columns {
		ck := key + ".columns." + col.Name
		if !chIdent.MatchString(col.Name) {
			return keyErr(ck, "is not a column name of letters, digits and underscores, not starting with a digit")
		}
		for _, r := range ViewReserved {
			if col.Name == r {
				return keyErr(ck, "is reserved: every view table has %s, copied from the event", strings.Join(ViewReserved, ", "))
			}
		}
		if col.Expr == "" {
			return keyErr(ck, "must be a ClickHouse expression over the events table, e.g. JSONExtractString(event_context, 'order_id')")
		}
	}
	return nil
}

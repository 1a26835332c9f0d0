package conformance

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// driverLoadedMarker starts the line the e2e binary logs after decoding a
// -storage.testdriver file: the decoded struct, printed with %+v
// (test/e2e/storage/external.AddDriverDefinition).
const driverLoadedMarker = "Driver loaded from path ["

// knownCapabilities are the capability names of the storage test framework
// (the Cap* constants of test/e2e/storage/framework/testdriver.go) at the
// Kubernetes release the e2e binary is built from. Capabilities are a map, so
// a misspelt name is decoded as it is and silently never asked for.
var knownCapabilities = []string{
	"persistence", "block", "fsGroup", "volumeMountGroup", "exec", "snapshotDataSource",
	"snapshotMetadata", "groupSnapshot", "pvcDataSource", "multipods", "RWX",
	"controllerExpansion", "nodeExpansion", "offlineExpansion", "onlineExpansion",
	"volumeLimits", "singleNodeVolume", "topology", "capacity", "FSResizeFromSourceNotSupported",
	"readWriteOncePod", "multiplePVsSameID", "capReadOnlyMany", "seLinuxMount",
}

// CheckDriverFile checks that the e2e binary decoded every setting of the
// driver file: the driver definition is decoded case-sensitively into Go
// field names and a key that matches no field is dropped without a word, so
// "topologyKeys" would leave TopologyKeys empty and quietly skip specs. log
// is the binary's output; each setting "Key: value" of the file must appear
// as "Key:value" in the decoded struct it logs.
func CheckDriverFile(driverFile string, log io.Reader) error {
	data, err := os.ReadFile(driverFile)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", driverFile, err)
	}
	decoded, err := findDecodedDriver(log)
	if err != nil {
		return fmt.Errorf("%s: %w", driverFile, err)
	}
	var problems []string
	for _, s := range settings("", doc) {
		if !strings.Contains(decoded, s.key+":"+s.value) {
			problems = append(problems, fmt.Sprintf("%s (%s:%s) is not in what the suites decoded", s.path, s.key, s.value))
		}
	}
	if caps, ok := lookup(doc, "DriverInfo", "Capabilities").(map[string]any); ok {
		for name := range caps {
			if !slices.Contains(knownCapabilities, name) {
				problems = append(problems, fmt.Sprintf("DriverInfo.Capabilities.%s is not a capability the suites know", name))
			}
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("%s: keys are case-sensitive Go field names and unknown keys are dropped:\n  %s\ndecoded: %s",
			driverFile, strings.Join(problems, "\n  "), decoded)
	}
	return nil
}

// findDecodedDriver returns the logged driver struct.
func findDecodedDriver(log io.Reader) (string, error) {
	sc := bufio.NewScanner(log)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if _, after, ok := strings.Cut(sc.Text(), driverLoadedMarker); ok {
			return after, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	return "", fmt.Errorf("the e2e binary did not log the decoded driver (%q)", driverLoadedMarker)
}

// setting is one leaf of the driver file, as %+v prints it: a scalar as
// Key:value, a list of scalars as Key:[a b]. A list of maps (InlineVolumes)
// gives the leaves of each map, which %+v prints inside the list's structs.
type setting struct {
	path, key, value string
}

func settings(prefix string, m map[string]any) []setting {
	var out []setting
	for key, v := range m {
		path := strings.TrimPrefix(prefix+"."+key, ".")
		switch v := v.(type) {
		case map[string]any:
			out = append(out, settings(path, v)...)
		case []any:
			if maps := mapsOf(v); maps != nil {
				for i, item := range maps {
					out = append(out, settings(fmt.Sprintf("%s[%d]", path, i), item)...)
				}
				continue
			}
			items := make([]string, len(v))
			for i, item := range v {
				items[i] = fmt.Sprint(item)
			}
			out = append(out, setting{path, key, "[" + strings.Join(items, " ") + "]"})
		case float64: // every YAML number, as %+v prints an int
			out = append(out, setting{path, key, strconv.FormatFloat(v, 'f', -1, 64)})
		default:
			out = append(out, setting{path, key, fmt.Sprint(v)})
		}
	}
	return out
}

// mapsOf returns the items of list when every one is a map, else nil.
func mapsOf(list []any) []map[string]any {
	var out []map[string]any
	for _, item := range list {
		m, ok := item.(map[string]any)
		if !ok {
			return nil
		}
		out = append(out, m)
	}
	return out
}

func lookup(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

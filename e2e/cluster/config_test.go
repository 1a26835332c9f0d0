package cluster

import (
	"strings"
	"testing"
)

func TestConfigDefaults(t *testing.T) {
	for _, tc := range []struct {
		name             string
		cfg              Config
		realNodes, pods  int
		wantErrSubstring string
	}{
		{name: "nothing set: two real nodes", cfg: Config{}, realNodes: 2, pods: 110},
		{name: "real and fake nodes", cfg: Config{Nodes: 3, FakeNodes: 4}, realNodes: 3, pods: 110},
		{name: "fake nodes only", cfg: Config{Nodes: NoRealNodes, FakeNodes: 5}, realNodes: 0, pods: 110},
		{name: "fake nodes with room for more pods", cfg: Config{Nodes: NoRealNodes, FakeNodes: 5, FakeNodePods: 1100}, realNodes: 0, pods: 1100},
		{name: "no node at all", cfg: Config{Nodes: NoRealNodes}, wantErrSubstring: "needs fake nodes"},
		{name: "too many real nodes", cfg: Config{Nodes: maxNodes + 1}, wantErrSubstring: "between 1 and 50"},
		{name: "negative real nodes", cfg: Config{Nodes: -2, FakeNodes: 1}, wantErrSubstring: "between 1 and 50"},
		{name: "negative fake nodes", cfg: Config{FakeNodes: -1}, wantErrSubstring: "must not be negative"},
		{name: "negative pods per fake node", cfg: Config{FakeNodes: 1, FakeNodePods: -1}, wantErrSubstring: "must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.CacheDir = t.TempDir()
			err := cfg.setDefaults()
			if tc.wantErrSubstring != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSubstring) {
					t.Fatalf("setDefaults() = %v, want an error saying %q", err, tc.wantErrSubstring)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.realNodes(); got != tc.realNodes {
				t.Errorf("real nodes %d, want %d", got, tc.realNodes)
			}
			if cfg.FakeNodePods != tc.pods {
				t.Errorf("pods per fake node %d, want %d", cfg.FakeNodePods, tc.pods)
			}
			if cfg.Out == nil {
				t.Error("no default output")
			}
		})
	}
}

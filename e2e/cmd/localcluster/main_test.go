package main

import (
	"testing"

	"github.com/stickyvol/stickyvol/e2e/cluster"
)

func TestUpNodes(t *testing.T) {
	for _, tc := range []struct {
		nodes, fake int
		want        int
		wantErr     bool
	}{
		{nodes: 2, want: 2},
		{nodes: 1, fake: 3, want: 1},
		{nodes: 0, fake: 5, want: cluster.NoRealNodes},
		{nodes: 0, wantErr: true},
		{nodes: -1, fake: 5, wantErr: true},
	} {
		cfg := cluster.Config{Nodes: tc.nodes, FakeNodes: tc.fake}
		err := upNodes(&cfg)
		if (err != nil) != tc.wantErr {
			t.Errorf("--nodes %d --fake-nodes %d: error %v, want error %v", tc.nodes, tc.fake, err, tc.wantErr)
			continue
		}
		if err == nil && cfg.Nodes != tc.want {
			t.Errorf("--nodes %d --fake-nodes %d: Config.Nodes %d, want %d", tc.nodes, tc.fake, cfg.Nodes, tc.want)
		}
	}
}

// Package story is stickyvol's end-to-end suite (build tag e2e): the
// StatefulSet story on a real two-node cluster of the project's own
// (e2e/cluster), with stickyvol deployed from its image by the local overlay,
// asserting what a user sees with kubectl. See main_test.go for how to run it.
package story

#!/bin/sh
# Stage "app" of Dockerfile.genie and Dockerfile.agent, second step: the workspace the server
# runs in (the image's WORKDIR).
#
#   workspace.sh APP VENV WORKSPACE
#
# APP=hive: the Hive server loads its agents, teams and workflows from ai/agents/*/config.yaml,
# ai/teams/*/, ai/workflows/*/ under its working directory ("At least one agent is required"
# without them). They are laid out here from the templates the package ships
# (VENV/automagik_hive/templates/), since `automagik-hive init` would also download from the
# internet.
# APP=example: the example API (examples/hive/app) and api/serve.py, which gives it the Hive
# server's entry point (`uvicorn api.serve:app --factory`), so both run the same CMD.
#
# The workspace belongs to root: the server reads it and writes nothing there.
set -eu
app=$1
venv=$2
workspace=$3
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$workspace"
case $app in
    hive)
        templates=$venv/automagik_hive/templates
        mkdir -p "$workspace/ai"
        for kind in agents teams workflows; do
            found=$(find "$templates/$kind" -mindepth 2 -maxdepth 2 -name config.yaml | wc -l)
            if [ "$found" -eq 0 ]; then
                echo "workspace: no $kind in $templates" >&2
                exit 1
            fi
            cp -R "$templates/$kind" "$workspace/ai/$kind"
        done
        find "$workspace" -name __pycache__ -type d -prune -exec rm -rf {} +
        ;;
    example)
        cp -R "$here/example/app" "$here/example/api" "$workspace/"
        find "$workspace" -name __pycache__ -type d -prune -exec rm -rf {} +
        ;;
    *)
        echo "workspace: APP must be hive or example, not '$app'" >&2
        exit 1
        ;;
esac
chown -R root:root "$workspace"
echo "workspace: $app in $workspace:"
find "$workspace" -name '*.yaml' -o -name '*.py' | sort

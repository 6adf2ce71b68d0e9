#!/usr/bin/env node
import "../dist/node/src/main.js";

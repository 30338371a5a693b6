// natter's web app. Component library: Preact (with signals): React's component model in about
// 5 KB, so the bundle the natter binary embeds stays small and loads fast on a phone.

import { render } from "preact";
import { start } from "./state.ts";
import { App } from "./ui/App.tsx";
import "./style.css";

start();
render(<App />, document.getElementById("app")!);

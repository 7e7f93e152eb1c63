from mesh_agent.launch import mesh_agent

mesh_agent()
